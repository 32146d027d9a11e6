"""NaFlex preprocessing ops: images keep their aspect ratio, become as many patches as a sequence length allows,
and are padded to that length, so that batches have static shapes.

    "decode|resize_to_seq(256, 16)|value_range(-1, 1)|patchify(16, 256)"

`resize_to_seq` resizes to the largest patch grid within `max_seq_len` patches at the image's aspect ratio (timm's
`get_image_size_for_seq`: the same bisection over the scale, in float64); `patchify` replaces the image by its
patches (L, P*P*C) in (row, column, channel) order, padding being zero patches at (0, 0), packed with each patch's
(row, column) and validity as three more columns: a float32 (L, P*P*C + 3) array, the packed input of a NaFlex
model (`vitjax.models.naflexvit`). Packed, a NaFlex example is one array like any image, so batching, sharding,
prefetching and every evaluator take it unchanged. Augmentations that work on images go before `patchify`.
"""

import tensorflow as tf

from vitjax.data.geometric import resize_image
from vitjax.data.preprocess import Op, image_op, register


def grid_for_seq(height: tf.Tensor, width: tf.Tensor, patch: int, max_seq_len: int) -> tf.Tensor:
  """(rows, columns) of patches for an image of `height` x `width` scaled by the largest ratio (to 1e-5, found by
  bisection between 1e-6 and 100, as timm does) whose patch grid, each side rounded up, has at most `max_seq_len`
  patches."""
  size = tf.cast(tf.stack([height, width]), tf.float64)

  def grid(ratio: tf.Tensor) -> tf.Tensor:
    return tf.maximum(tf.math.ceil(size * ratio / patch), 1.0)

  def step(low, high):
    mid = (low + high) / 2.0
    fits = tf.reduce_prod(grid(mid)) <= max_seq_len
    return tf.where(fits, mid, low), tf.where(fits, high, mid)

  eps = tf.constant(1e-5, tf.float64)
  low, _ = tf.while_loop(lambda low, high: high - low >= eps, step, (eps / 10.0, tf.constant(100.0, tf.float64)))
  return tf.cast(grid(low), tf.int32)


@register("resize_to_seq")
def resize_to_seq(max_seq_len: int, patch_size: int = 16, method: str = "bicubic", antialias: bool = True) -> Op:
  """Resizes, keeping the aspect ratio, to the largest grid of `patch_size` patches within `max_seq_len` of them
  (each side a multiple of `patch_size`); keeps the dtype of uint8 images."""
  if max_seq_len < 1 or patch_size < 1:
    raise ValueError(f"max_seq_len and patch_size must be positive, got {max_seq_len} and {patch_size}")

  def fn(image, seed):
    del seed
    shape = tf.shape(image)
    grid = grid_for_seq(shape[0], shape[1], patch_size, max_seq_len)
    return resize_image(image, grid * patch_size, method, antialias)

  return image_op(fn)


def patchify_image(image: tf.Tensor, patch: int, max_seq_len: int) -> dict[str, tf.Tensor]:
  """One image (H, W, C), zero-padded at the bottom and right to whole patches, as the padded NaFlex mapping."""
  shape = tf.shape(image)
  channels = image.shape[-1] or shape[-1]  # Static where known, so that the patch width is too.
  width = patch * patch * image.shape[-1] if image.shape[-1] else None
  rows, cols = -(-shape[0] // patch), -(-shape[1] // patch)
  image = tf.pad(image, [[0, rows * patch - shape[0]], [0, cols * patch - shape[1]], [0, 0]])
  tf.debugging.assert_less_equal(rows * cols, max_seq_len, message="more patches than max_seq_len: resize first")
  patches = tf.reshape(
    tf.transpose(tf.reshape(image, [rows, patch, cols, patch, channels]), [0, 2, 1, 3, 4]),
    [-1, patch * patch * channels],
  )
  y, x = tf.meshgrid(tf.range(rows), tf.range(cols), indexing="ij")
  coords = tf.stack([tf.reshape(y, [-1]), tf.reshape(x, [-1])], axis=-1)
  pad = max_seq_len - rows * cols
  return {
    "patches": tf.ensure_shape(tf.pad(patches, [[0, pad], [0, 0]]), [max_seq_len, width]),
    "patch_coord": tf.ensure_shape(tf.pad(coords, [[0, pad], [0, 0]]), [max_seq_len, 2]),
    "patch_valid": tf.ensure_shape(tf.range(max_seq_len) < rows * cols, [max_seq_len]),
  }


def pack(mapping: dict[str, tf.Tensor]) -> tf.Tensor:
  """The (L, P*P*C + 3) float32 packed form of `patchify_image`'s mapping: patches, then row, column, validity."""
  extra = [tf.cast(mapping["patch_coord"], tf.float32), tf.cast(mapping["patch_valid"], tf.float32)[:, None]]
  return tf.concat([tf.cast(mapping["patches"], tf.float32), *extra], axis=-1)


@register("patchify")
def patchify(patch_size: int, max_seq_len: int) -> Op:
  """Replaces the image by its patches, their (row, column) and validity, padded to `max_seq_len` and packed
  (module docstring); an image with more patches fails (put `resize_to_seq` first)."""
  if max_seq_len < 1 or patch_size < 1:
    raise ValueError(f"max_seq_len and patch_size must be positive, got {max_seq_len} and {patch_size}")
  return image_op(lambda image, seed: pack(patchify_image(image, patch_size, max_seq_len)))
