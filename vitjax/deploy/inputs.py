"""Images from files and arrays to a model's input: the run's own eval preprocessing, split where pixels turn float.

The ops of `pp_eval` up to its final `value_range` or `normalize` (decoding, resizing, cropping, `to_rgb`) run on the
host in TensorFlow exactly as in evaluation and keep uint8 pixels; that final op runs in JAX, inside the model
function, so that the same function serves Python callers and exported models that take uint8 batches.
"""

import glob
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from vitjax.data import preprocess
from vitjax.errors import ConfigError

# The ops that may end a spec and move into the model function (photometric.value_range and normalize).
NORMALIZATIONS = ("value_range", "normalize")
PATCHIFY, PACKED_EXTRA = "patchify", 3  # NaFlex's op (data/patches.py) and the columns it packs after the pixels.


class UnreadableFileError(ValueError):
  """A file that is missing, unreadable or not an image TensorFlow can decode; the message says which and why."""


def find_files(pattern: str) -> list[str]:
  """Every file that `pattern` names, sorted: the file itself, a folder's files (recursively, hidden ones left out),
  or the matches of a glob (`**` recursive). Non-image files are kept, so that a caller can report them."""
  if os.path.isfile(pattern):
    return [pattern]
  if os.path.isdir(pattern):
    found = []
    for root, dirs, names in os.walk(pattern):
      dirs[:] = [d for d in dirs if not d.startswith(".")]
      found.extend(os.path.join(root, name) for name in names if not name.startswith("."))
    return sorted(found)
  matches = sorted(path for path in glob.glob(pattern, recursive=True) if os.path.isfile(path))
  if not matches:
    raise ConfigError(f"No image file, folder or glob match at {pattern!r}.")
  return matches


def read_file(path: str) -> bytes:
  """The bytes of `path`, or an UnreadableFileError naming the reason."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise UnreadableFileError(f"cannot read {path}: {e.strerror or e}") from None


def decode(contents: bytes, path: str = "<bytes>") -> np.ndarray:
  """uint8 RGB pixels (height, width, 3) of an encoded JPEG, PNG, GIF, BMP or WebP image (first frame)."""
  try:
    return tf.io.decode_image(contents, channels=3, expand_animations=False).numpy()
  except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
    raise UnreadableFileError(f"not a decodable image: {path}: {_reason(e)}") from None


def decoded_channels(image: np.ndarray) -> np.ndarray:
  """The three channels `decode` gives a file of these pixels (H, W, C): grey repeated, an alpha channel dropped."""
  return np.repeat(image[..., :1], 3, axis=-1) if image.shape[-1] < 3 else image[..., :3]


class Preprocessing:
  """A run's `pp_eval`, split into host ops (uint8 in, uint8 out) and the final normalisation, as a JAX function."""

  def __init__(self, spec: str):
    texts, calls = preprocess.op_texts(spec), preprocess.calls(spec)
    self.spec = spec
    # NaFlex specs end with `patchify` after their normalisation: the host patchifies uint8 pixels, the model
    # function normalises the patch columns of the packed array.
    self.packs = bool(calls) and calls[-1][0] == PATCHIFY
    self._patch = calls[-1][1]["patch_size"] if self.packs else 0
    last = len(calls) - 1 - self.packs
    # (name, every argument by name) of the final normalisation op, if the spec ends with one.
    self.normalization = calls[last] if last >= 0 and calls[last][0] in NORMALIZATIONS else None
    self.host_spec = "|".join(t for i, t in enumerate(texts) if not (self.normalization and i == last))
    self.image_spec = "|".join(texts[:-1] if self.packs else texts)  # The spec up to whole images.
    self.decodes = preprocess.decodes(spec)
    op = preprocess.parse(self.host_spec)
    no_seed = tf.zeros([2], tf.int64)  # Evaluation ops are deterministic.
    run = lambda image: op({"image": image}, no_seed)["image"]  # noqa: E731
    self._from_pixels = tf.function(run, input_signature=[tf.TensorSpec([None, None, None], tf.uint8)])
    self._from_bytes = tf.function(run, input_signature=[tf.TensorSpec([], tf.string)]) if self.decodes else None
    self.input_shape = self._probe_input_shape()

  def file(self, path: str) -> np.ndarray:
    """The host-preprocessed pixels of the image file at `path` (UnreadableFileError if it is not one)."""
    contents = read_file(path)
    if self._from_bytes is None:
      return self.pixels(decode(contents, path))
    try:
      return self._from_bytes(tf.constant(contents)).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
      raise UnreadableFileError(f"not a decodable image: {path}: {_reason(e)}") from None

  def pixels(self, image: np.ndarray) -> np.ndarray:
    """The host-preprocessed form of one uint8 image, (height, width) or (height, width, channels): exactly what a
    lossless file of the same pixels gives, channels included (grey arrays become RGB unless the spec decodes)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 2, 3, 4)):
      raise ValueError(
        f"Images must be uint8 arrays of shape (H, W) or (H, W, C) with 1 to 4 channels, got {image.dtype} "
        f"{image.shape}."
      )
    image = image if image.ndim == 3 else image[..., None]
    if self._from_bytes is not None:
      # The spec's own decoding op sets the channels of a file; a PNG is that file, losslessly.
      return self._from_bytes(tf.io.encode_png(image)).numpy()
    return self._from_pixels(tf.constant(decoded_channels(image))).numpy()

  def normalize(self, images: jax.Array) -> jax.Array:
    """The spec's final `value_range` or `normalize` in JAX (float32 out), the same arithmetic as the TF op."""
    x = jnp.asarray(images).astype(jnp.float32)
    if self.normalization is None:
      return x
    if self.packs:  # Patches (row, column, channel)-flattened, then (row, column, validity), which stay as they are.
      width = x.shape[-1]  # Static slices, not gathers: exporters take no gather on a batch of open size.
      patches = jax.lax.slice_in_dim(x, 0, width - PACKED_EXTRA, axis=-1)
      rest = jax.lax.slice_in_dim(x, width - PACKED_EXTRA, width, axis=-1)
      pixels = patches.reshape(*patches.shape[:-1], self._patch**2, -1)
      valid = jax.lax.slice_in_dim(rest, PACKED_EXTRA - 1, PACKED_EXTRA, axis=-1)  # Padding stays zero, as in TF.
      return jnp.concatenate([self._normalized(pixels).reshape(patches.shape) * valid, rest], axis=-1)
    return self._normalized(x)

  def image(self, packed: np.ndarray) -> np.ndarray:
    """The host-preprocessed image that a NaFlex spec's packed patches (L, P*P*C + 3) were cut from: each valid
    patch back at its (row, column), (rows * P, columns * P, C)."""
    patch, valid = self._patch, packed[:, -1] > 0.5
    coords = np.round(packed[valid, -3:-1]).astype(int)
    rows, cols = coords.max(axis=0) + 1
    pixels = packed[valid, :-PACKED_EXTRA].reshape(-1, patch, patch, (packed.shape[1] - PACKED_EXTRA) // patch**2)
    image = np.zeros((rows * patch, cols * patch, pixels.shape[-1]), packed.dtype)
    for (row, col), values in zip(coords, pixels):
      image[row * patch : (row + 1) * patch, col * patch : (col + 1) * patch] = values
    return image

  def _normalized(self, x: jax.Array) -> jax.Array:
    """The spec's normalisation of pixels [..., C]."""
    name, a = self.normalization
    if name == "value_range":
      return a["low"] + (x - a["in_low"]) * ((a["high"] - a["low"]) / (a["in_high"] - a["in_low"]))
    return (x / 255.0 - jnp.asarray(a["mean"], jnp.float32)) / jnp.asarray(a["std"], jnp.float32)

  def _probe_input_shape(self) -> tuple[int, ...] | None:
    """(height, width, channels) the host ops give whatever the input size, or None if they keep the input size."""
    shapes = {self.pixels(np.zeros(size, np.uint8)).shape for size in ((61, 47, 3), (37, 53, 3))}
    return shapes.pop() if len(shapes) == 1 else None


def _reason(error: tf.errors.OpError) -> str:
  """TensorFlow's message for a failed decode, without the op and device names it wraps it in."""
  lines = error.message.strip().splitlines()
  return re.sub(r"\{\{function_node [^}]*\}\}|\[Op:\w+\]", "", lines[0] if lines else type(error).__name__).strip()
