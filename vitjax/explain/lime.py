"""LIME (Ribeiro et al. 2016) on superpixels: a weighted linear model of the class probability over which SLIC
superpixels are shown, fitted on random on/off samples near the whole image.

The superpixels (scikit-image) and the ridge fit (scikit-learn) run on the host; the sampled images go through the
model in jitted batches.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from skimage import segmentation
from sklearn.linear_model import Ridge

from vitjax.explain.scorer import Scorer, map_batches


def superpixels(image: np.ndarray, *, segments: int, compactness: float) -> np.ndarray:
  """SLIC labels [H, W] (0..k-1) of an image [H, W, C] in [0, 255], about `segments` of them."""
  image = np.asarray(image, np.float64) / 255.0
  labels = segmentation.slic(image, n_segments=segments, compactness=compactness, start_label=0, channel_axis=-1)
  return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


def sample_masks(key: jax.Array, samples: int, count: int) -> jax.Array:
  """[samples, count] 0/1 choices of superpixels to show, each on with probability 1/2; the first shows all (the
  image itself, LIME's anchor)."""
  masks = jax.random.bernoulli(key, 0.5, (samples, count)).astype(jnp.float32)
  return masks.at[0].set(1.0)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def masked_probabilities(
  scorer: Scorer, image: jax.Array, label: jax.Array, labels: jax.Array, masks: jax.Array, *, batch_size: int
) -> jax.Array:
  """The probability of `label` [samples] of the image with the superpixels that `masks` [samples, k] switch off
  painted black."""
  probability = lambda m: scorer.probabilities(m[:, labels][..., None] * image[None])[:, label]
  return map_batches(probability, masks, batch_size)


def fit(masks: np.ndarray, scores: np.ndarray, *, kernel_width: float, ridge: float) -> np.ndarray:
  """Ridge coefficients [k] of the scores on the masks, samples weighted by LIME's exponential kernel on the cosine
  distance from the all-on mask."""
  masks, scores = np.asarray(masks, np.float64), np.asarray(scores, np.float64)
  norms = np.linalg.norm(masks, axis=1) * np.sqrt(masks.shape[1])
  distance = 1.0 - masks.sum(axis=1) / np.maximum(norms, 1e-12)
  weights = np.sqrt(np.exp(-(distance**2) / kernel_width**2))
  return Ridge(alpha=ridge).fit(masks, scores, sample_weight=weights).coef_


def lime(
  scorer: Scorer,
  image: np.ndarray,
  label: int,
  key: jax.Array,
  *,
  samples: int,
  segments: int,
  compactness: float,
  kernel_width: float,
  ridge: float,
  batch_size: int,
) -> np.ndarray:
  """The LIME map [H, W] of class `label`: each pixel carries its superpixel's coefficient."""
  labels = superpixels(image, segments=segments, compactness=compactness)
  count = int(labels.max()) + 1
  # Columns up to a power of two, unused: images with different superpixel counts share one compiled function.
  masks = sample_masks(key, samples, 1 << (count - 1).bit_length())
  scores = masked_probabilities(
    scorer, jnp.asarray(image, jnp.float32), label, jnp.asarray(labels), masks, batch_size=batch_size
  )
  coefficients = fit(np.asarray(masks[:, :count]), np.asarray(scores), kernel_width=kernel_width, ridge=ridge)
  return coefficients[labels]
