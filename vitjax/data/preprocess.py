"""Preprocessing specs: pipe-separated ops named in configs, ``"resize(32)|flip_lr|value_range(-1, 1)"``.

Every op is a factory registered by name: called with the spec's arguments it returns a function
``(features, seed) -> features`` over one example. Random ops draw from stateless TF random functions keyed by
``seed`` (a shape-[2] int tensor), so an example's augmentation depends only on the seed the pipeline gives it:
the same eagerly and inside ``tf.data``, and the same again after a resume.

Images are uint8 in [0, 255] until ``value_range`` or ``normalize`` turns them into float32; geometric and colour
ops keep the dtype they are given. A spec that starts with ``decode`` or ``decode_jpeg_and_inception_crop``
receives encoded image bytes from TFDS sources (decoding after the shuffle keeps the buffer small); any other
spec receives decoded images.

This module holds the registry and the parser; the ops register themselves in ``decoding``, ``geometric``,
``patches``, ``photometric`` and ``augment``, which the first lookup imports.
"""

import ast
import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from vitjax.errors import ConfigError

Features = dict[str, tf.Tensor]
Op = Callable[[Features, tf.Tensor], Features]

_REGISTRY: dict[str, Callable[..., Op]] = {}
# The modules whose ops register themselves; loaded on the first lookup, so every importer of this module sees them.
_OP_MODULES = ("augment", "decoding", "geometric", "patches", "photometric")
DECODING_OPS = ("decode", "decode_jpeg_and_inception_crop")


def register(name: str):
  """Registers an op factory under ``name`` for use in spec strings."""

  def decorator(factory):
    if name in _REGISTRY:
      raise ValueError(f"Preprocessing op {name!r} is registered twice.")
    _REGISTRY[name] = factory
    return factory

  return decorator


def _factory(name: str, spec: str) -> Callable[..., Op]:
  """The factory registered as ``name``, or a ConfigError naming the op, its spec and the choices."""
  if name not in names():
    raise ConfigError(f"Unknown preprocessing op {name!r} in {spec!r}; choose one of: {', '.join(names())}.")
  return _REGISTRY[name]


def names() -> list[str]:
  for module in _OP_MODULES:
    importlib.import_module(f"vitjax.data.{module}")
  return sorted(_REGISTRY)


def parse_call(text: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
  """Splits ``"name(1, b=2)"`` into its name and literal arguments."""
  try:
    node = ast.parse(text.strip(), mode="eval").body
  except SyntaxError as e:
    raise ConfigError(f"Cannot parse preprocessing op {text!r}: {e.msg}.") from None
  if isinstance(node, ast.Name):
    return node.id, (), {}
  if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
    raise ConfigError(f"Preprocessing op {text!r} must look like name or name(args).")
  try:
    args = tuple(ast.literal_eval(a) for a in node.args)
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
  except ValueError:
    raise ConfigError(f"Arguments of preprocessing op {text!r} must be Python literals.") from None
  return node.func.id, args, kwargs


def op_texts(spec: str) -> list[str]:
  """The ops of ``spec`` as written, in order: ``"resize(32)|flip_lr"`` -> ``["resize(32)", "flip_lr"]``."""
  return list(filter(None, (part.strip() for part in spec.split("|"))))


def op_names(spec: str) -> list[str]:
  """The names of the ops in ``spec``, in order."""
  return [parse_call(text)[0] for text in op_texts(spec)]


def calls(spec: str) -> list[tuple[str, dict[str, Any]]]:
  """Each op of ``spec`` in order, with every argument of its factory bound by name (defaults included)."""
  out = []
  for text in op_texts(spec):
    name, args, kwargs = parse_call(text)
    bound = inspect.signature(_factory(name, spec)).bind(*args, **kwargs)
    bound.apply_defaults()
    out.append((name, dict(bound.arguments)))
  return out


def decodes(spec: str) -> bool:
  """Whether ``spec`` decodes images itself (its first op is a decoding op)."""
  names = op_names(spec)
  return bool(names) and names[0] in DECODING_OPS


def parse(spec: str) -> Op:
  """Builds one function ``(features, seed) -> features`` from a pipe-separated spec of ops."""
  ops = []
  for text in op_texts(spec):
    name, args, kwargs = parse_call(text)
    factory = _factory(name, spec)
    try:
      ops.append(factory(*args, **kwargs))
    except (TypeError, ValueError) as e:
      raise ConfigError(f"Bad arguments for preprocessing op {text!r}: {e}") from None

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


def pair(size: int | tuple[int, int]) -> tuple[int, int]:
  """(height, width) from an op's size argument: an int means a square."""
  return (size, size) if isinstance(size, int) else tuple(size)


def check_range(name: str, low: float, high: float, *, lowest: float = 0.0, highest: float = math.inf) -> None:
  """Rejects an op's (low, high) arguments outside [lowest, highest] or in the wrong order, at parse time."""
  if not lowest <= low <= high <= highest:
    raise ConfigError(f"{name} range ({low}, {high}) must satisfy {lowest} <= low <= high <= {highest}.")


def to_dtype(image: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """Casts a float result back to ``dtype``, rounding and clipping for uint8."""
  if image.dtype == dtype:
    return image
  if dtype == tf.uint8:
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
  return tf.cast(image, dtype)
