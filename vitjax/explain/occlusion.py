"""Occlusion sensitivity (Zeiler & Fergus 2014): how much the class probability drops when a patch is covered.

Every window position is one image of a batch; a pixel's value is the mean drop over the windows that cover it
(zero where none does, and wherever covering changes nothing).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import ConfigError
from vitjax.explain.scorer import Scorer, map_batches


def _starts(size: int, window: int, stride: int) -> list[int]:
  """Window offsets along one axis: every `stride`, plus one flush with the far edge so that all pixels are seen."""
  starts = list(range(0, size - window + 1, stride))
  return starts if starts[-1] == size - window else [*starts, size - window]


def window_masks(image_shape: tuple[int, ...], *, window: int, stride: int) -> np.ndarray:
  """Boolean masks [windows, H, W] of the square `window` x `window` patches, every `stride` pixels."""
  height, width = image_shape[:2]
  if not 0 < window <= min(height, width) or stride <= 0:
    raise ConfigError(
      f"config.explain.occlusion needs 0 < window <= {min(height, width)} (the image side) and stride > 0, "
      f"got window={window}, stride={stride}."
    )
  masks = []
  for top in _starts(height, window, stride):
    for left in _starts(width, window, stride):
      mask = np.zeros((height, width), bool)
      mask[top : top + window, left : left + window] = True
      masks.append(mask)
  return np.stack(masks)


@functools.partial(jax.jit, static_argnames=("window", "stride", "batch_size"))
def occlusion(
  scorer: Scorer, image: jax.Array, label: jax.Array, *, window: int, stride: int, fill: float, batch_size: int
) -> jax.Array:
  """Per pixel [H, W], the mean drop of the probability of `label` over the windows (filled with the pixel value
  `fill`) that cover it."""
  masks = jnp.asarray(window_masks(image.shape, window=window, stride=stride))
  probability = lambda x: scorer.probabilities(x)[:, label]
  covered = lambda m: jnp.where(m[..., None], fill, image[None])
  drops = probability(image[None])[0] - map_batches(lambda m: probability(covered(m)), masks, batch_size)
  counts = jnp.sum(masks, axis=0)
  return jnp.tensordot(drops, masks.astype(jnp.float32), axes=1) / jnp.maximum(counts, 1)
