"""Position-embedding resize for fine-tuning at a new resolution: the square token grid resized bilinearly."""

import math

import numpy as np

from vitjax.errors import ConfigError


def resize_posemb(posemb: np.ndarray, num_tokens: int) -> np.ndarray:
  """(1, N, D) position embeddings -> (1, num_tokens, D): the square grid resized bilinearly (order-1 zoom).

  A class-token slot (present when N - 1 is a square) is kept apart; a target without one drops it, and a target
  with one gets a zero slot when the source has none (big_vision adds position embeddings before the class token,
  which is the same as a zero slot).
  """
  (src_extra, src_side), (dst_extra, dst_side) = grid_of(posemb.shape[1]), grid_of(num_tokens)
  grid = posemb[0, src_extra:].reshape(src_side, src_side, -1)
  if src_side != dst_side:
    rows = linear_weights(src_side, dst_side)
    grid = np.einsum("Hh,Ww,hwd->HWd", rows, rows, grid.astype(np.float64)).astype(posemb.dtype)
  tokens = grid.reshape(1, dst_side * dst_side, -1)
  if dst_extra:
    slot = posemb[:, :1] if src_extra else np.zeros_like(posemb[:, :1])
    tokens = np.concatenate([slot, tokens], axis=1)
  return tokens


def grid_of(num_tokens: int) -> tuple[int, int]:
  """(extra tokens, grid side) of a position-embedding length: a square grid, or a square grid plus one."""
  for extra in (0, 1):
    side = math.isqrt(num_tokens - extra)
    if side * side == num_tokens - extra:
      return extra, side
  raise ConfigError(f"{num_tokens} position embeddings are neither a square grid nor a square grid plus a class token.")


def linear_weights(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) weights of 1-D linear interpolation with the end points aligned (scipy's zoom order=1)."""
  coords = np.arange(size_out) * ((size_in - 1) / (size_out - 1)) if size_out > 1 else np.zeros(1)
  low = np.minimum(np.floor(coords).astype(int), size_in - 1)
  high = np.minimum(low + 1, size_in - 1)
  frac = coords - low
  weights = np.zeros((size_out, size_in))
  np.add.at(weights, (np.arange(size_out), low), 1.0 - frac)
  np.add.at(weights, (np.arange(size_out), high), frac)
  return weights
