"""Deletion and insertion curves (Petsiuk et al. 2018): is the attribution's ranking of pixels the model's own?

Deletion blacks out pixels, most important first, and follows the class probability down: the faster it falls,
the smaller the area under the curve and the better the attribution. Insertion starts from the blurred image and
puts pixels back in the same order: a good attribution raises the probability early, a large area. A random
ranking is the reference. Ties (coarse maps, superpixels) are broken at random, so that no scan order is favoured.
"""

import functools

import jax
import jax.numpy as jnp

from vitjax.explain.filters import gaussian_blur
from vitjax.explain.scorer import Scorer, map_batches


def ranks(attribution: jax.Array, key: jax.Array) -> jax.Array:
  """Each pixel's place [H, W] in decreasing order of attribution (0: the most important), ties in random order."""
  flat = attribution.reshape(-1)
  order = jnp.lexsort((jax.random.uniform(key, flat.shape), -flat))
  return (
    jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32)).reshape(attribution.shape)
  )


def _area(curve: jax.Array) -> jax.Array:
  """Area under a curve sampled at evenly spaced fractions 0..1, by the trapezoid rule."""
  return (jnp.sum(curve) - 0.5 * (curve[0] + curve[-1])) / (curve.shape[0] - 1)


@functools.partial(jax.jit, static_argnames=("steps", "blur_sigma", "batch_size"))
def deletion_insertion(
  scorer: Scorer,
  image: jax.Array,
  label: jax.Array,
  attributions: jax.Array,
  key: jax.Array,
  *,
  steps: int,
  blur_sigma: float,
  batch_size: int,
) -> jax.Array:
  """[M, 2]: the deletion and insertion AUC of each of the M maps [M, H, W], the probability of `label` taken
  after each of `steps` equal shares of the pixels is removed or inserted."""
  height, width = image.shape[:2]
  shown = (jnp.arange(steps + 1) * (height * width) // steps)[:, None, None]  # Pixels changed at each point.
  blurred = gaussian_blur(image, blur_sigma)
  probability = lambda x: scorer.probabilities(x)[:, label]

  def areas(attribution, key):
    changed = (ranks(attribution, key)[None] < shown)[..., None]
    deleted = map_batches(lambda c: probability(jnp.where(c, 0.0, image[None])), changed, batch_size)
    inserted = map_batches(lambda c: probability(jnp.where(c, image[None], blurred[None])), changed, batch_size)
    return jnp.stack([_area(deleted), _area(inserted)])

  return jax.lax.map(lambda args: areas(*args), (attributions, jax.random.split(key, attributions.shape[0])))
