"""Swin Transformer (Liu et al. 2021) as timm's `swin_{tiny,small,base}_patch4_window7_224`.

Tree (timm's names): `patch_embed/{proj,norm}`, `layers_{i}/downsample/{norm,reduction}` (patch merging at the
start of stages 1-3), `layers_{i}/blocks_{j}/{norm1, attn/{qkv, relative_position_bias_table, proj}, norm2,
mlp/{fc1,fc2}}`, `norm`, `head`. Odd blocks attend within windows shifted by half a window, with the attention
mask that keeps tokens from wrapped-around regions apart.
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import ConfigError
from vitjax.models import registry
from vitjax.models.layers import Classifier, DropPath, Layer, check_patch_size, gelu, patch_embedding, stage_drop_rates

Array = jax.Array

# embed_dim, depths, num_heads (Liu et al. 2021, section 3.3).
VARIANTS = {
  "t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
  "s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
  "b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}

# The masked logits of tokens from different regions, as the reference implementation.
_MASKED = -100.0


def relative_position_index(height: int, width: int) -> np.ndarray:
  """(N, N) row of the relative-position bias table for each query/key pair of a height x width window."""
  coords = np.stack(np.meshgrid(np.arange(height), np.arange(width), indexing="ij")).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :]
  return (rel[0] + height - 1) * (2 * width - 1) + rel[1] + width - 1


def window_partition(x: Array, window: tuple[int, int]) -> Array:
  """(B, H, W, C) -> (B * windows, wh * ww, C), windows in row-major order within each image."""
  b, h, w, c = x.shape
  wh, ww = window
  x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, wh * ww, c)


def window_reverse(windows: Array, window: tuple[int, int], height: int, width: int) -> Array:
  """Inverse of `window_partition`: (B * windows, wh * ww, C) -> (B, H, W, C)."""
  wh, ww = window
  c = windows.shape[-1]
  x = windows.reshape(-1, height // wh, width // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, height, width, c)


def shift_mask(height: int, width: int, window: tuple[int, int], shift: tuple[int, int]) -> np.ndarray:
  """(windows, N, N) additive mask of the shifted windows: 0 within a region, -100 across regions.

  After the cyclic shift, the last windows hold tokens from opposite borders of the map; the regions are the three
  bands per axis of the reference implementation.
  """
  labels = np.zeros((height, width), np.float32)
  bands = lambda size, s: (slice(0, -size), slice(-size, -s), slice(-s, None))
  for i, rows in enumerate(bands(window[0], shift[0])):
    for j, cols in enumerate(bands(window[1], shift[1])):
      labels[rows, cols] = 3 * i + j
  labels = np.asarray(window_partition(labels[None, :, :, None], window))[..., 0]
  return np.where(labels[:, None, :] != labels[:, :, None], _MASKED, 0.0).astype(np.float32)


class WindowAttention(Layer):
  """Multi-head self-attention within each window, with a learned relative-position bias per head."""

  num_heads: int
  window: tuple[int, int]
  attention_dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: Array, mask: np.ndarray | None, *, deterministic: bool) -> Array:
    b, n, c = x.shape
    wh, ww = self.window
    head_dim = c // self.num_heads
    table = self.param(
      "relative_position_bias_table",
      nn.initializers.truncated_normal(stddev=0.02),
      ((2 * wh - 1) * (2 * ww - 1), self.num_heads),
      jnp.float32,
    )
    bias = table[relative_position_index(wh, ww).reshape(-1)].reshape(n, n, -1).transpose(2, 0, 1)
    qkv = nn.Dense(3 * c, dtype=self.dtype, name="qkv")(x).reshape(b, n, 3, self.num_heads, head_dim)
    q, k, v = (qkv[:, :, i] for i in range(3))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q / jnp.asarray(math.sqrt(head_dim), q.dtype), k).astype(jnp.float32)
    logits = logits + bias
    if mask is not None:
      windows = mask.shape[0]
      logits = (logits.reshape(b // windows, windows, self.num_heads, n, n) + mask[None, :, None]).reshape(logits.shape)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = nn.Dropout(rate=self.attention_dropout_rate)(weights, deterministic=deterministic)
    x = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, c)
    return nn.Dense(c, dtype=self.dtype, name="proj")(x)


class Mlp(Layer):
  """timm's Mlp: fc1, exact GELU, dropout, fc2, dropout."""

  hidden: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    dim = x.shape[-1]
    x = gelu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    x = nn.Dense(dim, dtype=self.dtype, name="fc2")(x)
    return nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)


class SwinBlock(Layer):
  """Pre-norm block: (shifted) window attention, then the MLP; both residual branches go through drop-path."""

  num_heads: int
  window: tuple[int, int]
  shift: tuple[int, int]
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    _, h, w, c = x.shape
    shifted = any(self.shift)
    y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm1")(x)
    if shifted:
      y = jnp.roll(y, (-self.shift[0], -self.shift[1]), axis=(1, 2))
    y = WindowAttention(self.num_heads, self.window, self.attention_dropout_rate, dtype=self.dtype, name="attn")(
      window_partition(y, self.window),
      shift_mask(h, w, self.window, self.shift) if shifted else None,
      deterministic=deterministic,
    )
    y = window_reverse(y, self.window, h, w)
    if shifted:
      y = jnp.roll(y, self.shift, axis=(1, 2))
    y = nn.Dropout(rate=self.dropout_rate)(y, deterministic=deterministic)
    x = x + DropPath(self.drop_path_rate)(y, deterministic=deterministic)
    y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm2")(x)
    y = Mlp(int(c * self.mlp_ratio), self.dropout_rate, dtype=self.dtype, name="mlp")(y, deterministic=deterministic)
    return x + DropPath(self.drop_path_rate)(y, deterministic=deterministic)


class PatchMerging(Layer):
  """2x2 neighbourhoods concatenated (timm's channel order), LayerNorm, then a bias-free linear map to `features`."""

  features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x)
    return nn.Dense(self.features, use_bias=False, dtype=self.dtype, name="reduction")(x)


def stage_window(grid: tuple[int, int], window: int, stage: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """(window, shift) of a stage as timm: a window no larger than the grid, and no shift where it covers the grid.

  Raises ValueError when the grid does not divide into whole windows.
  """
  size = tuple(min(g, window) for g in grid)
  if grid[0] % size[0] or grid[1] % size[1]:
    raise ConfigError(
      f"Swin stage {stage} has a {grid[0]}x{grid[1]} grid, which does not divide into {size[0]}x{size[1]} windows; "
      f"use an input size whose stage grids are multiples of the window (e.g. 224 or 448 for window 7)."
    )
  shift = tuple(0 if g <= window else window // 2 for g in grid)
  return size, shift


class SwinStage(Layer):
  """Patch merging (all stages but the first), then `depth` blocks, the odd ones with shifted windows."""

  depth: int
  num_heads: int
  window_size: int
  downsample: bool
  drop_path_rates: Sequence[float]
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stage: int = 0

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    if self.downsample:
      if x.shape[1] % 2 or x.shape[2] % 2:
        raise ConfigError(f"Swin stage {self.stage} merges 2x2 patches of an odd {x.shape[1]}x{x.shape[2]} grid")
      x = PatchMerging(2 * x.shape[-1], dtype=self.dtype, name="downsample")(x)
    window, shift = stage_window(x.shape[1:3], self.window_size, self.stage)
    for j in range(self.depth):
      x = SwinBlock(
        self.num_heads,
        window,
        shift if j % 2 else (0, 0),
        self.mlp_ratio,
        self.dropout_rate,
        self.attention_dropout_rate,
        self.drop_path_rates[j],
        dtype=self.dtype,
        name=f"blocks_{j}",
      )(x, deterministic=deterministic)
    return x


class PatchEmbed(Layer):
  """Non-overlapping p x p patches projected to `features` (`proj`), then LayerNorm (`norm`)."""

  features: int
  patch_size: int

  @nn.compact
  def __call__(self, images: Array) -> Array:
    p = self.patch_size
    check_patch_size(images, p)
    x = patch_embedding(self.features, p, dtype=self.dtype, name="proj")(images)
    return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x)


class SwinTransformer(Classifier):
  """Swin classifier: images (N, H, W, C) -> float32 logits; pooled features when `num_classes` is 0 or None.

  `stochastic_depth` is the last block's drop-path rate, rising linearly from 0 over all blocks.
  """

  num_classes: int | None
  embed_dim: int
  depths: Sequence[int]
  num_heads: Sequence[int]
  patch_size: int = 4
  window_size: int = 7
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Array:
    x = PatchEmbed(self.embed_dim, self.patch_size, dtype=self.dtype, name="patch_embed")(images.astype(self.dtype))
    rates = stage_drop_rates(self.stochastic_depth, self.depths)
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      x = SwinStage(
        depth,
        heads,
        self.window_size,
        downsample=i > 0,
        drop_path_rates=rates[i],
        mlp_ratio=self.mlp_ratio,
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        stage=i,
        dtype=self.dtype,
        name=f"layers_{i}",
      )(x, deterministic=not train)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return self.classify(x, self.dropout_rate, train)


FAMILY = registry.family(
  "swin",
  options={
    "dropout_rate": registry.Option(float, "Dropout after the patch embedding and in every block."),
    "attention_dropout_rate": registry.Option(float, "Dropout on the attention weights."),
    "stochastic_depth": registry.STOCHASTIC_DEPTH,
  },
  layer_groups=registry.LayerGroups(blocks=((r"^layers_(\d+)/", 1),), stem=r"^patch_embed/"),
)
# timm 1.0.31's counts (swin_*_patch4_window7_224) at 224x224 with 1000 classes.
for _variant, _params in {"t": 28_288_354, "s": 49_606_258, "b": 87_768_224}.items():
  registry.register(FAMILY, f"swin_{_variant}", SwinTransformer, VARIANTS[_variant], params=_params)
