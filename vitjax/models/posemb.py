"""Position embeddings of the Vision Transformer: learned (`AddPositionEmbs`, resizable for FlexiViT) and the
fixed 2-D sin-cos table."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import ConfigError
from vitjax.models import flexi

Array = jax.Array


def posemb_sincos_2d(*, height: int, width: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding (1, height*width, dim), the MoCo v3 / big_vision formula.

  A quarter of the channels each hold sin(x w), cos(x w), sin(y w), cos(y w) with
  w_k = temperature^(-k / (dim/4 - 1)), tokens in row-major order.
  """
  if dim % 4:
    raise ConfigError(f"sincos2d posemb needs a hidden size divisible by 4, got {dim}")
  y, x = np.mgrid[:height, :width]
  omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4 - 1))
  y = np.einsum("m,d->md", y.reshape(-1), omega)
  x = np.einsum("m,d->md", x.reshape(-1), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return pe[None].astype(np.float32)


class AddPositionEmbs(nn.Module):
  """Adds a learned (1, tokens, hidden) position embedding, initialised N(0, 0.02) as BERT.

  With `grids` (stored (h, w), used (h', w')) the table holds the stored grid and its grid part is resized
  bilinearly to the used one; tokens before the grid keep their entries.
  """

  @nn.compact
  def __call__(self, x: Array, *, grids: tuple[tuple[int, int], tuple[int, int]] | None = None) -> Array:
    if grids is None:
      pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1,) + x.shape[1:], jnp.float32)
      return x + pe.astype(x.dtype)
    (h, w), used = grids
    prefix = x.shape[1] - used[0] * used[1]
    pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1, prefix + h * w, x.shape[2]), jnp.float32)
    pe = jnp.concatenate([pe[:, :prefix], flexi.resize_posemb_grid(pe[:, prefix:], (h, w), used)], axis=1)
    return x + pe.astype(x.dtype)
