"""Image filters the methods share: the Gaussian blur of blurred baselines, insertion curves and regularisers."""

import jax
import jax.numpy as jnp
import numpy as np


def _blur_matrix(size: int, sigma: float) -> np.ndarray:
  """[size, size] row-stochastic Gaussian weights: row i averages the neighbours of position i, renormalised at
  the borders so that a constant image stays constant."""
  positions = np.arange(size, dtype=np.float64)
  weights = np.exp(-0.5 * ((positions[:, None] - positions[None, :]) / sigma) ** 2)
  return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
  """Images [..., H, W, C] blurred with a Gaussian of standard deviation `sigma` pixels (0: unchanged); separable,
  as two small matrix products, exact for any sigma."""
  if sigma <= 0:
    return images
  height, width = images.shape[-3:-1]
  rows, cols = jnp.asarray(_blur_matrix(height, sigma)), jnp.asarray(_blur_matrix(width, sigma))
  return jnp.einsum("ij,...jwc,kw->...ikc", rows, images, cols)
