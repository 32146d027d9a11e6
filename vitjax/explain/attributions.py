"""Gradient attributions in pixel space: vanilla gradients (Simonyan et al. 2014), SmoothGrad (Smilkov et al. 2017)
and integrated gradients (Sundararajan et al. 2017) with black or blurred baselines.

Every function is jitted and explains the logit of class `label` of one image [H, W, C] with pixels in [0, 255];
the noisy copies and the path steps run as batches of `batch_size`.
"""

import functools

import jax
import jax.numpy as jnp

from vitjax.errors import ConfigError
from vitjax.explain.filters import gaussian_blur
from vitjax.explain.scorer import Scorer, class_gradients

BASELINES = ("black", "blur")


@jax.jit
def gradients(scorer: Scorer, image: jax.Array, label: jax.Array) -> jax.Array:
  """d logit[label] / d pixels [H, W, C]."""
  return class_gradients(scorer, image[None], label, 1)[0]


@functools.partial(jax.jit, static_argnames=("samples", "noise", "batch_size"))
def smoothgrad(
  scorer: Scorer, image: jax.Array, label: jax.Array, key: jax.Array, *, samples: int, noise: float, batch_size: int
) -> jax.Array:
  """The mean gradient [H, W, C] over `samples` copies of the image with Gaussian noise of standard deviation
  `noise` times the pixel range (255)."""
  noisy = image[None] + noise * 255.0 * jax.random.normal(key, (samples, *image.shape))
  return jnp.mean(class_gradients(scorer, noisy, label, batch_size), axis=0)


def baseline(image: jax.Array, kind: str, *, blur_sigma: float) -> jax.Array:
  """The reference image of integrated gradients: all black, or the image blurred by `blur_sigma` pixels (no edges
  left, the colours kept)."""
  if kind not in BASELINES:
    raise ConfigError(f"Unknown integrated-gradients baseline {kind!r}; choose one of: {', '.join(BASELINES)}.")
  return jnp.zeros_like(image) if kind == "black" else gaussian_blur(image, blur_sigma)


@functools.partial(jax.jit, static_argnames=("steps", "batch_size"))
def integrated_gradients(
  scorer: Scorer, image: jax.Array, label: jax.Array, reference: jax.Array, *, steps: int, batch_size: int
) -> tuple[jax.Array, jax.Array]:
  """(attributions [H, W, C], completeness error): (image - reference) times the path integral of the gradient
  along the straight line from `reference` to `image`, by the trapezoid rule on `steps` intervals. The
  attributions sum to logit(image) - logit(reference) up to the quadrature error, returned relative to that
  difference."""
  alphas = jnp.linspace(0.0, 1.0, steps + 1)
  path = reference[None] + alphas[:, None, None, None] * (image - reference)[None]
  grads = class_gradients(scorer, path, label, batch_size)
  weights = jnp.full(steps + 1, 1.0 / steps).at[jnp.array([0, steps])].set(0.5 / steps)
  attributions = (image - reference) * jnp.tensordot(weights, grads, axes=1)
  ends = scorer.logits(jnp.stack([image, reference]))[:, label]
  difference = ends[0] - ends[1]
  error = jnp.abs(jnp.sum(attributions) - difference) / jnp.maximum(jnp.abs(difference), 1e-12)
  return attributions, error


def saliency(attributions: jax.Array) -> jax.Array:
  """A gradient's per-pixel importance [H, W]: the mean absolute value over channels (its sign says little)."""
  return jnp.mean(jnp.abs(attributions), axis=-1)


def contribution(attributions: jax.Array) -> jax.Array:
  """Integrated gradients per pixel [H, W]: the channels' signed sum, the pixel's share of the score change."""
  return jnp.sum(attributions, axis=-1)
