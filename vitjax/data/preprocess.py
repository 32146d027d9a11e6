"""Preprocessing ops, named in configs as a pipe-separated spec: ``"resize(32)|flip_lr|value_range(-1, 1)"``.

Every op is a factory registered by name: called with the spec's arguments it returns a function
``(features, seed) -> features`` over one example. Random ops draw from stateless TF random functions keyed by
``seed`` (a shape-[2] int tensor), so an example's augmentation depends only on the seed the pipeline gives it:
the same eagerly and inside ``tf.data``, and the same again after a resume.
"""

import ast
from typing import Any, Callable

import tensorflow as tf

Features = dict[str, tf.Tensor]
Op = Callable[[Features, tf.Tensor], Features]

_REGISTRY: dict[str, Callable[..., Op]] = {}


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


def parse(spec: str) -> Op:
  """Builds one function ``(features, seed) -> features`` from a pipe-separated spec of ops."""
  ops = []
  for text in filter(None, (part.strip() for part in spec.split("|"))):
    name, args, kwargs = _parse_call(text)
    if name not in _REGISTRY:
      raise ValueError(f"Unknown preprocessing op {name!r} in {spec!r}; choose one of: {', '.join(names())}.")
    try:
      ops.append(_REGISTRY[name](*args, **kwargs))
    except TypeError as e:
      raise ValueError(f"Bad arguments for preprocessing op {text!r}: {e}.") from None

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


@register("decode")
def decode(channels: int = 3) -> Op:
  """Decodes an encoded JPEG/PNG/GIF/BMP string to uint8 with ``channels`` channels."""
  return image_op(lambda image, seed: tf.io.decode_image(image, channels=channels, expand_animations=False))


@register("resize")
def resize(size: int | tuple[int, int], method: str = "bilinear", antialias: bool = True) -> Op:
  """Resizes to ``size`` (an int for a square, or (height, width)); keeps the input dtype for uint8 images."""
  size = (size, size) if isinstance(size, int) else tuple(size)

  def fn(image, seed):
    resized = tf.image.resize(image, size, method=method, antialias=antialias)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), image.dtype) if image.dtype == tf.uint8 else resized
  return image_op(fn)


@register("to_rgb")
def to_rgb() -> Op:
  """Makes any image 3-channel: grayscale is repeated, an alpha channel dropped."""
  def fn(image, seed):
    rgb = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.image.grayscale_to_rgb(image), lambda: image[..., :3])
    return tf.ensure_shape(rgb, image.shape[:-1].concatenate([3]))
  return image_op(fn)


@register("flip_lr")
def flip_lr() -> Op:
  """Mirrors the image left-right with probability 1/2."""
  return image_op(lambda image, seed: tf.image.stateless_random_flip_left_right(image, seed))


@register("pad_and_crop")
def pad_and_crop(pad: int) -> Op:
  """CIFAR-style translation: zero-pads ``pad`` pixels on each side, then crops back at a random offset."""
  def fn(image, seed):
    shape = tf.shape(image)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(padded, shape, seed)
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


@register("random_crop")
def random_crop(size: int | tuple[int, int]) -> Op:
  """Crops a ``size`` window at a uniformly random position."""
  height, width = (size, size) if isinstance(size, int) else size
  return image_op(lambda image, seed: tf.image.stateless_random_crop(
      image, tf.stack([height, width, tf.shape(image)[-1]]), seed))


@register("central_crop")
def central_crop(size: int | tuple[int, int]) -> Op:
  """Crops the central ``size`` window."""
  height, width = (size, size) if isinstance(size, int) else size

  def fn(image, seed):
    top = (tf.shape(image)[0] - height) // 2
    left = (tf.shape(image)[1] - width) // 2
    return image[top:top + height, left:left + width]
  return image_op(fn)
