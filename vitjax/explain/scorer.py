"""The model as every explanation method sees it: pixels in [0, 255] in, class scores out, and its layers reachable.

Attributions live in pixel space: the run's final normalisation (`value_range` or `normalize` of `pp_eval`) is part
of the function being explained, so a gradient or an occluded patch speaks of the image a person looks at.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from vitjax.errors import ConfigError


@struct.dataclass
class Scorer:
  """A model, its variables and its input normalisation; a pytree whose only leaves are the variables, so that a
  jitted method takes it as an argument and compiles once per model, not once per set of weights."""

  variables: Any
  model: nn.Module = struct.field(pytree_node=False)
  normalize: Callable[[jax.Array], jax.Array] = struct.field(pytree_node=False)
  activation: str = struct.field(pytree_node=False, default="softmax")

  @classmethod
  def from_classifier(cls, classifier: Any) -> "Scorer":
    """The scorer of a `vitjax.Classifier`: its model, weights, `pp_eval` normalisation and output activation."""
    return cls(
      classifier.variables, classifier.model, classifier.preprocessing.normalize, activation=classifier.activation
    )

  def apply(self, pixels: jax.Array, **kwargs: Any) -> Any:
    """`model.apply` in evaluation mode on pixels [N, H, W, C] in [0, 255]; `kwargs` as `apply` takes them."""
    return self.model.apply(self.variables, self.normalize(pixels), train=False, **kwargs)

  def logits(self, pixels: jax.Array) -> jax.Array:
    """Float32 logits [N, num_classes]."""
    return self.apply(pixels).astype(jnp.float32)

  def probabilities(self, pixels: jax.Array) -> jax.Array:
    """Class probabilities [N, num_classes]: softmax, or independent sigmoids for multi-label models."""
    logits = self.logits(pixels)
    return jax.nn.sigmoid(logits) if self.activation == "sigmoid" else jax.nn.softmax(logits, axis=-1)


def map_batches(fn: Callable[[jax.Array], Any], xs: jax.Array, batch_size: int) -> Any:
  """`fn` over the leading axis of `xs` in chunks of `batch_size` (the last one padded with zeros): one compiled
  body whatever the count, and memory bounded by one chunk."""
  count = xs.shape[0]
  if count <= batch_size:
    return fn(xs)
  pad = -count % batch_size
  padded = jnp.concatenate([xs, jnp.zeros((pad, *xs.shape[1:]), xs.dtype)])
  out = jax.lax.map(fn, padded.reshape(-1, batch_size, *xs.shape[1:]))
  return jax.tree.map(lambda y: y.reshape(-1, *y.shape[2:])[:count], out)


def class_gradients(scorer: Scorer, pixels: jax.Array, label: jax.Array, batch_size: int) -> jax.Array:
  """d logit[label] / d pixels for every image of a batch [N, H, W, C]: one backward pass per chunk, since the
  images of a batch do not interact in evaluation mode."""
  total = lambda x: jnp.sum(scorer.logits(x)[:, label])
  return map_batches(jax.grad(total), pixels, batch_size)


def _interceptor(path: str, perturbation: Any, seen: list):
  """Adds `perturbation` to the output of the module at `path` (its `__call__`) and records that output."""

  def intercept(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != "__call__" or "/".join(context.module.path) != path:
      return out
    if not isinstance(out, jax.Array):
      raise ConfigError(f"Module {path!r} returns {type(out).__name__}, not an array: choose another layer.")
    seen.append(out)
    return out + perturbation

  return intercept


def logits_at_layer(scorer: Scorer, pixels: jax.Array, path: str, perturbation: Any = 0.0):
  """(logits, the output of the module at `path`) with `perturbation` added to that output: its gradient is the
  gradient with respect to the layer's activation, without forking the model."""
  seen = []
  with nn.intercept_methods(_interceptor(path, perturbation, seen)):
    logits = scorer.logits(pixels)
  if not seen:
    known = ", ".join(path for path, _ in module_outputs(scorer, pixels.shape[1:]) if path)
    raise ConfigError(f"The model has no module at {path!r}; choose one of: {known}.")
  return logits, seen[0]


def module_outputs(scorer: Scorer, image_shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
  """(path, output shape) of every module call of one forward pass in call order, found without computing one."""
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and isinstance(out, jax.Array):
      calls.append(("/".join(context.module.path), tuple(out.shape)))
    return out

  def forward(variables):
    with nn.intercept_methods(record):
      return scorer.replace(variables=variables).logits(jnp.zeros((1, *image_shape), jnp.float32))

  jax.eval_shape(forward, scorer.variables)
  return calls
