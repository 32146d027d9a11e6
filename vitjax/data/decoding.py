"""Decoding preprocessing ops: encoded bytes to pixels, and the number of channels.

The decoding ops also accept decoded images, because a cached TFDS share holds decoded examples whatever the spec.
"""

import tensorflow as tf

from vitjax.data.geometric import inception_args, inception_box, resize_image
from vitjax.data.preprocess import Op, image_op, pair, register
from vitjax.errors import ConfigError


def rgb(image: tf.Tensor) -> tf.Tensor:
  """Three channels: grayscale repeated, an alpha channel dropped."""
  # `tf.tile` rather than `grayscale_to_rgb`, which rejects a statically 3-channel image even in the untaken branch.
  three = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image[..., :3])
  return tf.ensure_shape(three, image.shape[:-1].concatenate([3]))


@register("decode")
def decode(channels: int = 3) -> Op:
  """Decodes an encoded JPEG/PNG/GIF/BMP string to uint8 with ``channels`` (1 or 3) channels; already decoded
  images (a cached dataset) get the same channels."""
  if channels not in (1, 3):
    raise ConfigError(f"channels={channels} must be 1 or 3.")

  def fn(image, seed):
    if image.dtype == tf.string:
      return tf.io.decode_image(image, channels=channels, expand_animations=False)
    if channels == 3:
      return rgb(image)
    gray = tf.cond(tf.shape(image)[-1] == 1, lambda: image, lambda: tf.image.rgb_to_grayscale(image[..., :3]))
    return tf.ensure_shape(gray, image.shape[:-1].concatenate([1]))

  return image_op(fn)


@register("to_rgb")
def to_rgb() -> Op:
  """Makes any image 3-channel: grayscale is repeated, an alpha channel dropped."""
  return image_op(lambda image, seed: rgb(image))


@register("decode_jpeg_and_inception_crop")
def decode_jpeg_and_inception_crop(
  size: int | tuple[int, int] | None = None,
  area_min: float = 0.08,
  area_max: float = 1.0,
  ratio_min: float = 3 / 4,
  ratio_max: float = 4 / 3,
  method: str = "bilinear",
  antialias: bool = True,
) -> Op:
  """``decode|inception_crop`` in one step that decodes only the crop window of a JPEG (much less work on
  ImageNet-size images); other formats are decoded whole, and decoded images are cropped as they are."""
  area, ratio = inception_args(area_min, area_max, ratio_min, ratio_max)

  def crop_decoded(image, seed):
    begin, box = inception_box(tf.shape(image), seed, area, ratio)
    return tf.ensure_shape(tf.slice(image, begin, box), [None, None, image.shape[-1]])

  def fn(image, seed):
    if image.dtype != tf.string:
      crop = crop_decoded(rgb(image), seed)
    else:

      def jpeg():
        begin, box = inception_box(tf.image.extract_jpeg_shape(image), seed, area, ratio)
        return tf.image.decode_and_crop_jpeg(image, tf.stack([begin[0], begin[1], box[0], box[1]]), channels=3)

      def other():
        return crop_decoded(tf.io.decode_image(image, channels=3, expand_animations=False), seed)

      crop = tf.ensure_shape(tf.cond(tf.io.is_jpeg(image), jpeg, other), [None, None, 3])
    return crop if size is None else resize_image(crop, pair(size), method, antialias)

  return image_op(fn)
