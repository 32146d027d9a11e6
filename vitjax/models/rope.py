"""2-D axial rotary position embedding (RoPE) for ViT queries and keys, as "Rotary Position Embedding for Vision
Transformer" (Heo et al. 2024, RoPE-Axial).

For a token at row y, column x of an h x w grid and a head of size d (d divisible by 4), channel pairs
(2i, 2i+1) are rotated by the angle theta_i:

    theta_i = x * base^(-i / (d/4))            for i = 0 .. d/4 - 1   (first half of the pairs: columns)
    theta_i = y * base^(-(i - d/4) / (d/4))    for i = d/4 .. d/2 - 1 (second half: rows)
    (q_2i, q_2i+1) -> (q_2i cos theta_i - q_2i+1 sin theta_i, q_2i sin theta_i + q_2i+1 cos theta_i)

with base 100, the paper's choice for images (positions are small integers, so base 10,000 would leave most
frequencies nearly constant). A rotation keeps norms, and q.k after rotation depends on the positions only
through their offset. Prefix tokens (class token, registers) are not rotated.
"""

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import ConfigError

Array = jax.Array

BASE = 100.0


def rope_2d_angles(*, height: int, width: int, head_dim: int, base: float = BASE) -> np.ndarray:
  """Rotation angles (height*width, head_dim/2) of the tokens of a row-major grid: columns, then rows."""
  if head_dim % 4:
    raise ConfigError(f"rope2d needs a head size divisible by 4, got {head_dim}; change hidden_size or num_heads")
  freqs = base ** (-np.arange(head_dim // 4) / (head_dim // 4))
  rows, cols = np.mgrid[:height, :width]
  return np.concatenate([np.outer(cols.reshape(-1), freqs), np.outer(rows.reshape(-1), freqs)], axis=1)


def apply_rope(x: Array, angles: np.ndarray, *, num_prefix: int) -> Array:
  """`x` (batch, tokens, heads, head_dim) with tokens after the first `num_prefix` rotated by `angles`."""
  prefix, tokens = x[:, :num_prefix], x[:, num_prefix:]
  cos = jnp.asarray(np.cos(angles), x.dtype)[None, :, None, :]
  sin = jnp.asarray(np.sin(angles), x.dtype)[None, :, None, :]
  pairs = tokens.reshape(*tokens.shape[:-1], -1, 2)
  even, odd = pairs[..., 0], pairs[..., 1]
  rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(tokens.shape)
  return jnp.concatenate([prefix, rotated], axis=1)
