"""Preprocessing ops, named in configs as a pipe-separated spec: ``"resize(32)|flip_lr|value_range(-1, 1)"``.

Every op is a factory registered by name: called with the spec's arguments it returns a function
``(features, seed) -> features`` over one example. Random ops draw from stateless TF random functions keyed by
``seed`` (a shape-[2] int tensor), so an example's augmentation depends only on the seed the pipeline gives it:
the same eagerly and inside ``tf.data``, and the same again after a resume.

Images are uint8 in [0, 255] until ``value_range`` or ``normalize`` turns them into float32; geometric and colour
ops keep the dtype they are given. A spec that starts with ``decode`` or ``decode_jpeg_and_inception_crop``
receives encoded image bytes from TFDS sources (decoding after the shuffle keeps the buffer small); any other
spec receives decoded images.
"""

import ast
import math
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from vitjax.data import augment

Features = dict[str, tf.Tensor]
Op = Callable[[Features, tf.Tensor], Features]

_REGISTRY: dict[str, Callable[..., Op]] = {}
DECODING_OPS = ("decode", "decode_jpeg_and_inception_crop")


def register(name: str):
  """Registers an op factory under ``name`` for use in spec strings."""

  def decorator(factory):
    if name in _REGISTRY:
      raise ValueError(f"Preprocessing op {name!r} is registered twice.")
    _REGISTRY[name] = factory
    return factory

  return decorator


def names() -> list[str]:
  return sorted(_REGISTRY)


def _parse_call(text: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
  """Splits ``"name(1, b=2)"`` into its name and literal arguments."""
  try:
    node = ast.parse(text.strip(), mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"Cannot parse preprocessing op {text!r}: {e.msg}.") from None
  if isinstance(node, ast.Name):
    return node.id, (), {}
  if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
    raise ValueError(f"Preprocessing op {text!r} must look like name or name(args).")
  try:
    args = tuple(ast.literal_eval(a) for a in node.args)
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
  except ValueError:
    raise ValueError(f"Arguments of preprocessing op {text!r} must be Python literals.") from None
  return node.func.id, args, kwargs


def _calls(spec: str) -> list[str]:
  return list(filter(None, (part.strip() for part in spec.split("|"))))


def op_names(spec: str) -> list[str]:
  """The names of the ops in ``spec``, in order."""
  return [_parse_call(text)[0] for text in _calls(spec)]


def decodes(spec: str) -> bool:
  """Whether ``spec`` decodes images itself (its first op is a decoding op)."""
  names = op_names(spec)
  return bool(names) and names[0] in DECODING_OPS


def parse(spec: str) -> Op:
  """Builds one function ``(features, seed) -> features`` from a pipe-separated spec of ops."""
  ops = []
  for text in _calls(spec):
    name, args, kwargs = _parse_call(text)
    if name not in _REGISTRY:
      raise ValueError(f"Unknown preprocessing op {name!r} in {spec!r}; choose one of: {', '.join(names())}.")
    try:
      ops.append(_REGISTRY[name](*args, **kwargs))
    except (TypeError, ValueError) as e:
      raise ValueError(f"Bad arguments for preprocessing op {text!r}: {e}") from None

  def apply(features: Features, seed: tf.Tensor) -> Features:
    seeds = tf.random.experimental.stateless_split(seed, num=max(len(ops), 1))
    for i, op in enumerate(ops):
      features = op(dict(features), seeds[i])
    return features

  return apply


def image_op(fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> Op:
  """Lifts ``fn(image, seed) -> image`` to an op over the features dict."""

  def op(features: Features, seed: tf.Tensor) -> Features:
    features["image"] = fn(features["image"], seed)
    return features

  return op


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else tuple(size)


def _check_range(name: str, low: float, high: float, *, lowest: float = 0.0, highest: float = math.inf) -> None:
  if not lowest <= low <= high <= highest:
    raise ValueError(f"{name} range ({low}, {high}) must satisfy {lowest} <= low <= high <= {highest}.")


def _to_dtype(image: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """Casts a float result back to ``dtype``, rounding and clipping for uint8."""
  if image.dtype == dtype:
    return image
  if dtype == tf.uint8:
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
  return tf.cast(image, dtype)


def _resize(image: tf.Tensor, size, method: str, antialias: bool) -> tf.Tensor:
  resized = tf.image.resize(image, size, method=method, antialias=antialias)
  return _to_dtype(resized, image.dtype) if image.dtype == tf.uint8 else resized


def _rgb(image: tf.Tensor) -> tf.Tensor:
  """Three channels: grayscale repeated, an alpha channel dropped."""
  rgb = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.image.grayscale_to_rgb(image), lambda: image[..., :3])
  return tf.ensure_shape(rgb, image.shape[:-1].concatenate([3]))


@register("decode")
def decode(channels: int = 3) -> Op:
  """Decodes an encoded JPEG/PNG/GIF/BMP string to uint8 with ``channels`` (1 or 3) channels; already decoded
  images (a cached dataset) get the same channels."""
  if channels not in (1, 3):
    raise ValueError(f"channels={channels} must be 1 or 3.")

  def fn(image, seed):
    if image.dtype == tf.string:
      return tf.io.decode_image(image, channels=channels, expand_animations=False)
    if channels == 3:
      return _rgb(image)
    gray = tf.cond(tf.shape(image)[-1] == 1, lambda: image, lambda: tf.image.rgb_to_grayscale(image[..., :3]))
    return tf.ensure_shape(gray, image.shape[:-1].concatenate([1]))

  return image_op(fn)


@register("resize")
def resize(size: int | tuple[int, int], method: str = "bilinear", antialias: bool = True) -> Op:
  """Resizes to ``size`` (an int for a square, or (height, width)); keeps the input dtype for uint8 images."""
  size = _pair(size)
  return image_op(lambda image, seed: _resize(image, size, method, antialias))


@register("resize_small")
def resize_small(size: int, method: str = "bilinear", antialias: bool = True) -> Op:
  """Resizes so that the shorter side is ``size``, keeping the aspect ratio."""

  def fn(image, seed):
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    new = tf.cast(tf.round(shape * (size / tf.reduce_min(shape))), tf.int32)
    return _resize(image, tf.maximum(new, size), method, antialias)

  return image_op(fn)


@register("to_rgb")
def to_rgb() -> Op:
  """Makes any image 3-channel: grayscale is repeated, an alpha channel dropped."""
  return image_op(lambda image, seed: _rgb(image))


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
  height, width = _pair(size)

  def fn(image, seed):
    crop = tf.image.stateless_random_crop(image, tf.stack([height, width, tf.shape(image)[-1]]), seed)
    return tf.ensure_shape(crop, [height, width, image.shape[-1]])

  return image_op(fn)


@register("center_crop")
def center_crop(size: int | tuple[int, int]) -> Op:
  """Crops the central ``size`` window (the extra pixel of an odd margin goes to the bottom/right)."""
  height, width = _pair(size)

  def fn(image, seed):
    top = (tf.shape(image)[0] - height) // 2
    left = (tf.shape(image)[1] - width) // 2
    return tf.ensure_shape(image[top : top + height, left : left + width], [height, width, image.shape[-1]])

  return image_op(fn)


def _inception_box(shape: tf.Tensor, seed: tf.Tensor, area: tuple[float, float], ratio: tuple[float, float]):
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


def _inception_args(area_min, area_max, ratio_min, ratio_max):
  _check_range("area", area_min, area_max, lowest=1e-6, highest=1.0)
  _check_range("ratio", ratio_min, ratio_max, lowest=1e-6)
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
  area, ratio = _inception_args(area_min, area_max, ratio_min, ratio_max)

  def fn(image, seed):
    begin, box = _inception_box(tf.shape(image), seed, area, ratio)
    crop = tf.ensure_shape(tf.slice(image, begin, box), [None, None, image.shape[-1]])
    return crop if size is None else _resize(crop, _pair(size), method, antialias)

  return image_op(fn)


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
  area, ratio = _inception_args(area_min, area_max, ratio_min, ratio_max)

  def crop_decoded(image, seed):
    begin, box = _inception_box(tf.shape(image), seed, area, ratio)
    return tf.ensure_shape(tf.slice(image, begin, box), [None, None, image.shape[-1]])

  def fn(image, seed):
    if image.dtype != tf.string:
      crop = crop_decoded(_rgb(image), seed)
    else:

      def jpeg():
        begin, box = _inception_box(tf.image.extract_jpeg_shape(image), seed, area, ratio)
        return tf.image.decode_and_crop_jpeg(image, tf.stack([begin[0], begin[1], box[0], box[1]]), channels=3)

      def other():
        return crop_decoded(tf.io.decode_image(image, channels=3, expand_animations=False), seed)

      crop = tf.ensure_shape(tf.cond(tf.io.is_jpeg(image), jpeg, other), [None, None, 3])
    return crop if size is None else _resize(crop, _pair(size), method, antialias)

  return image_op(fn)


@register("rotate")
def rotate(max_degrees: float = 10.0, fill: float = 0.0, method: str = "bilinear") -> Op:
  """Rotates by an angle drawn uniformly from [-max_degrees, max_degrees]; uncovered corners get ``fill``."""
  interpolation = {"bilinear": "BILINEAR", "nearest": "NEAREST"}.get(method)
  if interpolation is None:
    raise ValueError(f"method must be 'bilinear' or 'nearest', got {method!r}")

  def fn(image, seed):
    degrees = tf.random.stateless_uniform([], seed, -max_degrees, max_degrees)
    return augment.rotate(image, degrees, fill=fill, interpolation=interpolation)

  return image_op(fn)


@register("color_jitter")
def color_jitter(brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.0) -> Op:
  """Scales brightness, contrast and saturation by factors drawn from [1 - x, 1 + x] and shifts hue by up to
  ``hue`` of a full turn (torchvision's ColorJitter), in that order; a [0, 255] image keeps its dtype."""
  for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
    _check_range(name, 0.0, value, highest=1.0)
  _check_range("hue", 0.0, hue, highest=0.5)

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
    return _to_dtype(tf.clip_by_value(x, 0.0, 1.0) * 255.0, image.dtype)

  return image_op(fn)


@register("randaugment")
def randaugment(num_layers: int = 2, magnitude: float = 10.0) -> Op:
  """RandAugment(N, M) on uint8 RGB images; see ``vitjax.data.augment``."""
  if num_layers < 0 or magnitude < 0:
    raise ValueError(f"num_layers ({num_layers}) and magnitude ({magnitude}) must be non-negative")
  return image_op(lambda image, seed: augment.randaugment(image, seed, num_layers, magnitude))


@register("autoaugment")
def autoaugment(policy: str = "imagenet") -> Op:
  """AutoAugment with the paper's ImageNet policy on uint8 RGB images; see ``vitjax.data.augment``."""
  if policy != "imagenet":
    raise ValueError(f"Unknown AutoAugment policy {policy!r}; the available one is 'imagenet'")
  return image_op(lambda image, seed: augment.autoaugment(image, seed, augment.IMAGENET_POLICY))


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
  _check_range("prob", 0.0, prob, highest=1.0)
  _check_range("area", area_min, area_max, highest=1.0)
  _check_range("ratio", ratio_min, ratio_max, lowest=1e-6)
  if isinstance(value, str) and value != "random":
    raise ValueError(f"value must be a number or 'random', got {value!r}")

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
  _check_range("stddev", 0.0, stddev)

  def fn(image, seed):
    noisy = tf.cast(image, tf.float32) + tf.random.stateless_normal(tf.shape(image), seed, stddev=stddev)
    return _to_dtype(noisy, image.dtype)

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
