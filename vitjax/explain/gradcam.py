"""Grad-CAM (Selvaraju et al. 2017) on any named layer, through Flax's method interception: no fork of the model.

The class logit's gradient with respect to a zero added to the layer's output is its gradient with respect to the
activation; channels weighted by their mean gradient, summed and rectified, give where the layer saw the class.
"""

import functools

import jax
import jax.numpy as jnp

from vitjax.errors import ConfigError
from vitjax.explain import maps
from vitjax.explain.scorer import Scorer, logits_at_layer, module_outputs


def default_layer(scorer: Scorer, image_shape: tuple[int, ...]) -> str:
  """The last top-level feature map with more than one position (the last conv stage of a ResNet, BiT or hybrid,
  or the one before it where the last is 1x1 at this input size); for a plain ViT the last transformer block."""
  outputs = module_outputs(scorer, image_shape)
  spatial = [
    path
    for path, shape in outputs
    if path and "/" not in path and path != "embedding" and len(shape) == 4 and shape[1] * shape[2] > 1
  ]
  if spatial:
    return spatial[-1]
  blocks = [path for path, _ in outputs if path.startswith("Transformer/encoderblock_") and path.count("/") == 1]
  if not blocks:
    raise ConfigError("Found no feature map for Grad-CAM in this model: set config.explain.layer to a module path.")
  return blocks[-1]


@functools.partial(jax.jit, static_argnames=("layer",))
def grad_cam(scorer: Scorer, image: jax.Array, label: jax.Array, *, layer: str) -> jax.Array:
  """The Grad-CAM map [H, W] (non-negative) of class `label` at the module path `layer` (`layer4`,
  `Transformer/encoderblock_3`): its output, a conv map or a token sequence, is read as a grid of positions."""
  pixels = image[None]
  shape = jax.eval_shape(lambda s, x: logits_at_layer(s, x, layer)[1], scorer, pixels)

  def score(delta):
    logits, activation = logits_at_layer(scorer, pixels, layer, delta)
    return logits[0, label], activation

  gradient, activation = jax.grad(score, has_aux=True)(jnp.zeros(shape.shape, shape.dtype))
  prefix = maps.prefix_tokens(scorer.model)
  activation = maps.as_grid(activation[0].astype(jnp.float32), image.shape, prefix)
  gradient = maps.as_grid(gradient[0].astype(jnp.float32), image.shape, prefix)
  weights = jnp.mean(gradient, axis=(0, 1))
  cam = jax.nn.relu(jnp.einsum("hwc,c->hw", activation, weights))
  return maps.upsample(cam, image.shape)
