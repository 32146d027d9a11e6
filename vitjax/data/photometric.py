"""Photometric preprocessing ops: they change pixel values, not positions (colour, noise, erasing, value range)."""

import math

import numpy as np
import tensorflow as tf

from vitjax.data.preprocess import Op, calls, check_range, image_op, register, to_dtype
from vitjax.errors import ConfigError


@register("color_jitter")
def color_jitter(brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.0) -> Op:
  """Scales brightness, contrast and saturation by factors drawn from [1 - x, 1 + x] and shifts hue by up to
  ``hue`` of a full turn (torchvision's ColorJitter), in that order; a [0, 255] image keeps its dtype."""
  for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
    check_range(name, 0.0, value, highest=1.0)
  check_range("hue", 0.0, hue, highest=0.5)

  def fn(image, seed):
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    x = tf.cast(image, tf.float32) / 255.0
    if brightness:
      x = x * tf.random.stateless_uniform([], seeds[0], 1.0 - brightness, 1.0 + brightness)
    if contrast:
      x = tf.image.stateless_random_contrast(x, 1.0 - contrast, 1.0 + contrast, seeds[1])
    if saturation:
      x = tf.image.stateless_random_saturation(
        tf.clip_by_value(x, 0.0, 1.0), 1.0 - saturation, 1.0 + saturation, seeds[2]
      )
    if hue:
      x = tf.image.stateless_random_hue(tf.clip_by_value(x, 0.0, 1.0), hue, seeds[3])
    return to_dtype(tf.clip_by_value(x, 0.0, 1.0) * 255.0, image.dtype)

  return image_op(fn)


@register("random_erasing")
def random_erasing(
  prob: float = 0.25,
  area_min: float = 0.02,
  area_max: float = 1 / 3,
  ratio_min: float = 0.3,
  ratio_max: float = 10 / 3,
  value: float | str = "random",
) -> Op:
  """Random Erasing (Zhong et al. 2017): with probability ``prob`` replaces one rectangle covering a fraction in
  [area_min, area_max] of the image (aspect ratio in [ratio_min, ratio_max], clipped to the image) by ``value``,
  or by per-pixel noise for ``"random"``: standard normal on float images (use after ``normalize``), uniform
  0..255 on uint8 images."""
  check_range("prob", 0.0, prob, highest=1.0)
  check_range("area", area_min, area_max, highest=1.0)
  check_range("ratio", ratio_min, ratio_max, lowest=1e-6)
  if isinstance(value, str) and value != "random":
    raise ConfigError(f"value must be a number or 'random', got {value!r}")

  def fn(image, seed):
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 6))
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    area = tf.random.stateless_uniform([], seeds[0], area_min, area_max) * tf.cast(height * width, tf.float32)
    ratio = tf.exp(tf.random.stateless_uniform([], seeds[1], math.log(ratio_min), math.log(ratio_max)))
    box_h = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32), 1, height)
    box_w = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32), 1, width)
    top = tf.random.stateless_uniform([], seeds[2], 0, height - box_h + 1, tf.int32)
    left = tf.random.stateless_uniform([], seeds[3], 0, width - box_w + 1, tf.int32)
    rows, cols = tf.range(height)[:, None, None], tf.range(width)[None, :, None]
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    inside &= tf.random.stateless_uniform([], seeds[4]) < prob
    if value != "random":
      fill = tf.cast(value, image.dtype)
    elif image.dtype == tf.uint8:
      fill = tf.cast(tf.random.stateless_uniform(shape, seeds[5], 0, 256, tf.int32), tf.uint8)
    else:
      fill = tf.random.stateless_normal(shape, seeds[5], dtype=image.dtype)
    return tf.where(inside, fill, image)

  return image_op(fn)


@register("gaussian_noise")
def gaussian_noise(stddev: float = 0.1) -> Op:
  """Adds independent N(0, stddev^2) noise to every value, in the image's current units (clipped for uint8)."""
  check_range("stddev", 0.0, stddev)

  def fn(image, seed):
    noisy = tf.cast(image, tf.float32) + tf.random.stateless_normal(tf.shape(image), seed, stddev=stddev)
    return to_dtype(noisy, image.dtype)

  return image_op(fn)


@register("value_range")
def value_range(low: float = -1.0, high: float = 1.0, in_low: float = 0.0, in_high: float = 255.0) -> Op:
  """Maps pixel values linearly from [in_low, in_high] to [low, high] as float32 (the ViT/BiT convention)."""

  def fn(image, seed):
    image = tf.cast(image, tf.float32)
    return low + (image - in_low) * ((high - low) / (in_high - in_low))

  return image_op(fn)


@register("normalize")
def normalize(mean: tuple[float, ...] = (0.485, 0.456, 0.406), std: tuple[float, ...] = (0.229, 0.224, 0.225)) -> Op:
  """ImageNet-style standardisation of a [0, 255] image with per-channel mean and std given in [0, 1] units."""

  def fn(image, seed):
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)

  return image_op(fn)


def pixel_affine(spec: str) -> tuple[np.ndarray, np.ndarray]:
  """(scale, offset), per channel or scalar, of the map ``out = scale * pixel + offset`` that the value ops of
  ``spec`` (``value_range``, ``normalize``) apply to [0, 255] pixels, so that a host can get the pixels back."""
  scale, offset = np.ones(1), np.zeros(1)
  for name, args in calls(spec):
    if name == "value_range":
      factor = (args["high"] - args["low"]) / (args["in_high"] - args["in_low"])
      scale, offset = scale * factor, args["low"] + (offset - args["in_low"]) * factor
    elif name == "normalize":
      mean, std = np.asarray(args["mean"], np.float64), np.asarray(args["std"], np.float64)
      scale, offset = scale / (255.0 * std), (offset / 255.0 - mean) / std
  return scale, offset
