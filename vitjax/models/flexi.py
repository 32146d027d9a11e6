"""FlexiViT (Beyer et al. 2023): one patch embedding for every patch size, by pseudo-inverse resize.

Resizing a p x p patch bilinearly to q x q (q >= p) is a linear map B (q^2 x p^2). The kernel for q x q patches is
the one whose inner product with the resized patch equals the original's: w_q = pinv(B^T) w_p, so
<B x, w_q> = <x, w_p> for every patch x (big_vision's `resample_patchemb`). For q < p it is the least-squares
fit of that property.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.models.layers import Layer

Array = jax.Array


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) weights of 1-D bilinear resize with half-pixel centres and no antialiasing (as
  `tf.image.resize(..., "bilinear")` and `jax.image.resize(..., "bilinear", antialias=False)`)."""
  coords = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
  low = np.floor(coords).astype(int)
  high = np.minimum(low + 1, size_in - 1)
  weights = np.zeros((size_out, size_in))
  np.add.at(weights, (np.arange(size_out), low), 1.0 - (coords - low))
  np.add.at(weights, (np.arange(size_out), high), coords - low)
  return weights


def patch_resize_pinv(old: int, new: int) -> np.ndarray:
  """(new^2, old^2) matrix taking a flattened old x old kernel to the new x new one: pinv(B^T)."""
  one_d = bilinear_matrix(old, new)
  return np.linalg.pinv(np.kron(one_d, one_d).T)


def resize_patch_embedding(kernel: Array, new_patch_size: int) -> Array:
  """A (p, p, in, out) patch-embedding kernel as the (q, q, in, out) one that gives the same tokens on images
  resized bilinearly by q / p (exactly for q >= p)."""
  old = kernel.shape[0]
  if kernel.shape[1] != old:
    raise ValueError(f"Patch-embedding kernel must be square, got {kernel.shape[:2]}")
  if new_patch_size == old:
    return kernel
  matrix = jnp.asarray(patch_resize_pinv(old, new_patch_size), jnp.float32)
  flat = jnp.reshape(kernel, (old * old, *kernel.shape[2:]))
  out = jnp.einsum("nm,m...->n...", matrix, flat.astype(jnp.float32)).astype(kernel.dtype)
  return jnp.reshape(out, (new_patch_size, new_patch_size, *kernel.shape[2:]))


def resize_posemb_grid(posemb: Array, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Array:
  """(1, h*w, D) grid position embeddings resized bilinearly to (1, h'*w', D) (big_vision's FlexiViT)."""
  if tuple(old_grid) == tuple(new_grid):
    return posemb
  grid = jnp.reshape(posemb, (*old_grid, posemb.shape[-1]))
  grid = jax.image.resize(grid, (*new_grid, posemb.shape[-1]), method="bilinear")
  return jnp.reshape(grid, (1, new_grid[0] * new_grid[1], posemb.shape[-1]))


class FlexiPatchEmbedding(Layer):
  """The ViT's `embedding` (`kernel` (p, p, in, out), `bias`) stored at `patch_size`, applied at any patch size."""

  features: int
  patch_size: int

  @nn.compact
  def __call__(self, x: Array, *, patch: int) -> Array:
    p = self.patch_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    kernel = resize_patch_embedding(kernel, patch).astype(self.dtype)
    y = jax.lax.conv_general_dilated(
      x.astype(self.dtype), kernel, (patch, patch), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + bias.astype(self.dtype)
