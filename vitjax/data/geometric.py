"""Geometric preprocessing ops: they move pixels (resize, flip, crop, rotate) and keep the image's dtype."""

import tensorflow as tf

from vitjax.data import augment
from vitjax.data.preprocess import Op, check_range, image_op, pair, register, to_dtype
from vitjax.errors import ConfigError


def resize_image(image: tf.Tensor, size, method: str, antialias: bool) -> tf.Tensor:
  """``tf.image.resize`` that gives uint8 back for a uint8 image (resizing alone makes float32)."""
  resized = tf.image.resize(image, size, method=method, antialias=antialias)
  return to_dtype(resized, image.dtype) if image.dtype == tf.uint8 else resized


@register("resize")
def resize(size: int | tuple[int, int], method: str = "bilinear", antialias: bool = True) -> Op:
  """Resizes to ``size`` (an int for a square, or (height, width)); keeps the input dtype for uint8 images."""
  size = pair(size)
  return image_op(lambda image, seed: resize_image(image, size, method, antialias))


@register("resize_small")
def resize_small(size: int, method: str = "bilinear", antialias: bool = True) -> Op:
  """Resizes so that the shorter side is ``size``, keeping the aspect ratio."""

  def fn(image, seed):
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    new = tf.cast(tf.round(shape * (size / tf.reduce_min(shape))), tf.int32)
    return resize_image(image, tf.maximum(new, size), method, antialias)

  return image_op(fn)


@register("flip_lr")
def flip_lr() -> Op:
  """Mirrors the image left-right with probability 1/2."""
  return image_op(lambda image, seed: tf.image.stateless_random_flip_left_right(image, seed))


@register("flip_ud")
def flip_ud() -> Op:
  """Mirrors the image top-bottom with probability 1/2."""
  return image_op(lambda image, seed: tf.image.stateless_random_flip_up_down(image, seed))


@register("pad_and_crop")
def pad_and_crop(pad: int) -> Op:
  """CIFAR-style translation: zero-pads ``pad`` pixels on each side, then crops back at a random offset."""

  def fn(image, seed):
    shape = tf.shape(image)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.ensure_shape(tf.image.stateless_random_crop(padded, shape, seed), image.shape)

  return image_op(fn)


@register("random_crop")
def random_crop(size: int | tuple[int, int]) -> Op:
  """Crops a ``size`` window at a uniformly random position."""
  height, width = pair(size)

  def fn(image, seed):
    crop = tf.image.stateless_random_crop(image, tf.stack([height, width, tf.shape(image)[-1]]), seed)
    return tf.ensure_shape(crop, [height, width, image.shape[-1]])

  return image_op(fn)


@register("center_crop")
def center_crop(size: int | tuple[int, int]) -> Op:
  """Crops the central ``size`` window (the extra pixel of an odd margin goes to the bottom/right)."""
  height, width = pair(size)

  def fn(image, seed):
    top = (tf.shape(image)[0] - height) // 2
    left = (tf.shape(image)[1] - width) // 2
    return tf.ensure_shape(image[top : top + height, left : left + width], [height, width, image.shape[-1]])

  return image_op(fn)


def inception_box(shape: tf.Tensor, seed: tf.Tensor, area: tuple[float, float], ratio: tuple[float, float]):
  """(begin, size) of a random crop covering ``area`` of the image with width/height in ``ratio``."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    shape,
    bounding_boxes=tf.zeros([1, 0, 4]),
    seed=seed,
    min_object_covered=0.0,
    aspect_ratio_range=ratio,
    area_range=area,
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  return begin, size


def inception_args(area_min, area_max, ratio_min, ratio_max):
  """The checked (area, ratio) ranges of an Inception-style crop."""
  check_range("area", area_min, area_max, lowest=1e-6, highest=1.0)
  check_range("ratio", ratio_min, ratio_max, lowest=1e-6)
  return (area_min, area_max), (ratio_min, ratio_max)


@register("inception_crop")
def inception_crop(
  size: int | tuple[int, int] | None = None,
  area_min: float = 0.08,
  area_max: float = 1.0,
  ratio_min: float = 3 / 4,
  ratio_max: float = 4 / 3,
  method: str = "bilinear",
  antialias: bool = True,
) -> Op:
  """Inception-style random crop: a box covering a random fraction in [area_min, area_max] of the image with an
  aspect ratio (width / height) in [ratio_min, ratio_max], resized to ``size`` if given. After 10 failed draws
  the whole image is used."""
  area, ratio = inception_args(area_min, area_max, ratio_min, ratio_max)

  def fn(image, seed):
    begin, box = inception_box(tf.shape(image), seed, area, ratio)
    crop = tf.ensure_shape(tf.slice(image, begin, box), [None, None, image.shape[-1]])
    return crop if size is None else resize_image(crop, pair(size), method, antialias)

  return image_op(fn)


@register("rotate")
def rotate(max_degrees: float = 10.0, fill: float = 0.0, method: str = "bilinear") -> Op:
  """Rotates by an angle drawn uniformly from [-max_degrees, max_degrees]; uncovered corners get ``fill``."""
  interpolation = {"bilinear": "BILINEAR", "nearest": "NEAREST"}.get(method)
  if interpolation is None:
    raise ConfigError(f"method must be 'bilinear' or 'nearest', got {method!r}")

  def fn(image, seed):
    degrees = tf.random.stateless_uniform([], seed, -max_degrees, max_degrees)
    return augment.rotate(image, degrees, fill=fill, interpolation=interpolation)

  return image_op(fn)
