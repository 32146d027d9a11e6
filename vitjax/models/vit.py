"""Vision Transformer (Dosovitskiy et al. 2021) with the parameter names of the public vit_jax checkpoints.

Tree (ViT-B/16): `embedding/{kernel (16,16,3,768), bias}`, `cls`, `Transformer/posembed_input/pos_embedding`,
`Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out}, LayerNorm_1,
MlpBlock_0/{Dense_0,Dense_1}}`, `Transformer/encoder_norm`, optional `pre_logits`, `MAPHead_0`, and `head`.
Options add, only when set: `registers` (1, R, D); `query_norm`/`key_norm` in every attention; `LayerScale_0/1`
in every block. `scan` stores the blocks stacked on a leading axis as `Transformer/encoderblock/...` (big_vision).
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.models import flexi
from vitjax.models.attention import IMPLEMENTATIONS, MultiHeadDotProductAttention
from vitjax.models.layers import Conv, DropPath
from vitjax.models.remat import remat_block

Array = jax.Array
Dtype = Any

__all__ = ["MultiHeadDotProductAttention", "VisionTransformer", "posemb_sincos_2d"]

# hidden size, MLP size, heads, depth. Ti/S/B/L/H from the ViT and DeiT papers, g from "Scaling Vision
# Transformers" (Zhai et al. 2022, table 2); micro is a CIFAR-scale model for laptop runs.
VARIANTS = {
  "ti": dict(hidden_size=192, mlp_dim=768, num_heads=3, num_layers=12),
  "s": dict(hidden_size=384, mlp_dim=1536, num_heads=6, num_layers=12),
  "b": dict(hidden_size=768, mlp_dim=3072, num_heads=12, num_layers=12),
  "l": dict(hidden_size=1024, mlp_dim=4096, num_heads=16, num_layers=24),
  "h": dict(hidden_size=1280, mlp_dim=5120, num_heads=16, num_layers=32),
  "g": dict(hidden_size=1408, mlp_dim=6144, num_heads=16, num_layers=40),
  "micro": dict(hidden_size=128, mlp_dim=256, num_heads=4, num_layers=4),
}

CLASSIFIERS = ("token", "gap", "map")
POSEMBS = ("learn", "sincos2d", "rope2d")


def posemb_sincos_2d(*, height: int, width: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding (1, height*width, dim), the MoCo v3 / big_vision formula.

  A quarter of the channels each hold sin(x w), cos(x w), sin(y w), cos(y w) with
  w_k = temperature^(-k / (dim/4 - 1)), tokens in row-major order.
  """
  if dim % 4:
    raise ValueError(f"sincos2d posemb needs a hidden size divisible by 4, got {dim}")
  y, x = np.mgrid[:height, :width]
  omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4 - 1))
  y = np.einsum("m,d->md", y.reshape(-1), omega)
  x = np.einsum("m,d->md", x.reshape(-1), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return pe[None].astype(np.float32)


class MlpBlock(nn.Module):
  """Transformer feed-forward block: Dense, GELU, dropout, Dense, dropout."""

  mlp_dim: int
  dropout_rate: float = 0.0
  gelu_approximate: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    inits = dict(kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.normal(stddev=1e-6))
    dim = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0", **inits)(x)
    # vit_jax and big_vision call `nn.gelu` with its default, the tanh approximation; timm uses the exact GELU.
    x = nn.gelu(x, approximate=self.gelu_approximate)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    x = nn.Dense(dim, dtype=self.dtype, name="Dense_1", **inits)(x)
    return nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)


class LayerScale(nn.Module):
  """A learned per-channel scale of a residual branch (CaiT, Touvron et al. 2021), starting at `init_value`."""

  init_value: float

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.initializers.constant(self.init_value), (x.shape[-1],), jnp.float32)
    return x * scale.astype(x.dtype)


class Encoder1DBlock(nn.Module):
  """Pre-LayerNorm transformer block; both residual branches go through LayerScale (optional) and drop-path.

  `drop_path_rate` may come as a call argument instead (a traced per-block rate when the blocks are scanned).
  """

  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  qk_norm: bool = False
  layerscale: float | None = None
  rope_grid: tuple[int, int] | None = None
  attention: str = "xla"
  gelu_approximate: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool = True, drop_path_rate: Array | None = None) -> Array:
    rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")(inputs)
    x = MultiHeadDotProductAttention(
      num_heads=self.num_heads,
      dropout_rate=self.attention_dropout_rate,
      qk_norm=self.qk_norm,
      rope_grid=self.rope_grid,
      implementation=self.attention,
      dtype=self.dtype,
      name="MultiHeadDotProductAttention_0",
    )(x, x, deterministic=deterministic)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    if self.layerscale is not None:
      x = LayerScale(self.layerscale, name="LayerScale_0")(x)
    x = inputs + DropPath(rate)(x, deterministic=deterministic)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_1")(x)
    mlp = MlpBlock(self.mlp_dim, self.dropout_rate, self.gelu_approximate, self.dtype, name="MlpBlock_0")
    y = mlp(y, deterministic=deterministic)
    if self.layerscale is not None:
      y = LayerScale(self.layerscale, name="LayerScale_1")(y)
    return x + DropPath(rate)(y, deterministic=deterministic)


class Encoder(nn.Module):
  """Learned position embedding (optional), registers, dropout, `num_layers` blocks, final LayerNorm.

  Drop-path rates rise linearly from 0 in the first block to `stochastic_depth` in the last. `remat` and `scan`
  change memory and compile time, not the function: the blocks rematerialised (module `remat_block`), or one
  `nn.scan` over blocks whose parameters are stacked under `encoderblock`.
  """

  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  learned_posemb: bool = True
  qk_norm: bool = False
  layerscale: float | None = None
  rope_grid: tuple[int, int] | None = None
  attention: str = "xla"
  remat: str = "none"
  scan: bool = False
  gelu_approximate: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    x: Array,
    *,
    train: bool,
    registers: Array | None = None,
    num_cls: int = 0,
    posemb_grids: tuple[tuple[int, int], tuple[int, int]] | None = None,
  ) -> Array:
    """`registers` (N, R, D) go after the first `num_cls` tokens, after the position embedding (they have none);
    `posemb_grids` (stored, used) resizes the learned table to the grid in use (FlexiViT)."""
    if self.learned_posemb:
      x = AddPositionEmbs(name="posembed_input")(x, grids=posemb_grids)
    if registers is not None:
      x = jnp.concatenate([x[:, :num_cls], registers.astype(x.dtype), x[:, num_cls:]], axis=1)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
    block = remat_block(Encoder1DBlock, self.remat, scan=self.scan)
    options = dict(
      mlp_dim=self.mlp_dim,
      num_heads=self.num_heads,
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=self.attention_dropout_rate,
      qk_norm=self.qk_norm,
      layerscale=self.layerscale,
      rope_grid=self.rope_grid,
      attention=self.attention,
      gelu_approximate=self.gelu_approximate,
      dtype=self.dtype,
    )
    rates = self.stochastic_depth * np.arange(self.num_layers) / max(self.num_layers - 1, 1)
    if self.scan:
      stack = nn.scan(
        _scan_body(deterministic=not train),
        variable_axes={"params": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        length=self.num_layers,
      )
      x, _ = stack(block(name="encoderblock", **options), x, jnp.asarray(rates) if self.stochastic_depth else None)
    else:
      for i in range(self.num_layers):
        x = block(drop_path_rate=float(rates[i]), name=f"encoderblock_{i}", **options)(x, not train)
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="encoder_norm")(x)


def _scan_body(*, deterministic: bool) -> Callable:
  """One scan step: block `module` on the carried tokens with its own drop-path rate (None: the module's)."""

  def body(module: nn.Module, x: Array, rate: Array | None) -> tuple[Array, None]:
    return module(x, deterministic, rate), None

  return body


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


class MAPHead(nn.Module):
  """Multihead attention pooling (big_vision): a learned probe token attends to all tokens."""

  mlp_dim: int
  num_heads: int
  attention: str = "xla"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n, _, dim = x.shape
    probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, dim), jnp.float32)
    probe = jnp.tile(probe.astype(x.dtype), (n, 1, 1))
    x = MultiHeadDotProductAttention(
      num_heads=self.num_heads, implementation=self.attention, dtype=self.dtype, name="MultiHeadDotProductAttention_0"
    )(probe, x, deterministic=True)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")(x)
    x = x + MlpBlock(mlp_dim=self.mlp_dim, dtype=self.dtype, name="MlpBlock_0")(y, deterministic=True)
    return jax.lax.index_in_dim(x, 0, axis=1, keepdims=False)  # A slice, not a gather: see VisionTransformer.


class VisionTransformer(nn.Module):
  """ViT classifier: images (N, H, W, C) -> float32 logits (N, num_classes).

  `num_classes` 0 or None drops the head and returns the pooled (pre-logits) features. `dtype` is the compute
  dtype; parameters are always float32. Sows `pre_logits` into `intermediates`. Options (all off by default):
  `num_registers` register tokens after the class token, dropped before pooling (Darcet et al. 2024);
  `qk_norm`; `posemb="rope2d"` (module `rope`); `layerscale` (initial value); `patch_sizes`, FlexiViT training:
  each training call draws one of them (uniformly, from the "dropout" rng) and resizes the patch embedding and the
  position embedding to it, while evaluation uses `patch_size`; `remat`, `scan` and `attention` (module
  `attention`'s implementations) change speed and memory only.
  """

  num_classes: int | None
  patch_size: int
  hidden_size: int
  mlp_dim: int
  num_heads: int
  num_layers: int
  classifier: str = "token"
  representation_size: int | None = None
  posemb: str = "learn"
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  head_bias_init: float = 0.0
  num_registers: int = 0
  qk_norm: bool = False
  layerscale: float | None = None
  patch_sizes: Sequence[int] | None = None
  remat: str = "none"
  scan: bool = False
  attention: str = "xla"
  gelu_approximate: bool = True  # False: the exact GELU of timm's ViTs (DeiT, AugReg in timm's layout, DINO).
  dtype: Dtype = jnp.float32

  def stem(self, images: Array, *, train: bool) -> Array:
    """Feature map that the patch embedding reads; the images themselves for a plain ViT."""
    del train
    return images

  def __call__(self, images: Array, *, train: bool) -> Array:
    self._check_options()
    if train and self.patch_sizes:
      index = jax.random.randint(self.make_rng("dropout"), (), 0, len(self.patch_sizes))
      branches = [functools.partial(_train_at_patch_size, patch=p) for p in self.patch_sizes]
      # One program for all sizes: each branch runs the whole model at its token count, sharing the parameters.
      return nn.switch(index, branches, self, images)
    return self.forward(images, patch=self.patch_size, train=train)

  @nn.compact
  def forward(self, images: Array, *, patch: int, train: bool) -> Array:
    """Logits with `patch` x `patch` patches (the stored embedding resized to it when it is not `patch_size`)."""
    feature_map = self.stem(images.astype(self.dtype), train=train)
    stored = (feature_map.shape[1] // self.patch_size, feature_map.shape[2] // self.patch_size)
    x = self._embed(feature_map, patch=patch)
    n, h, w, c = x.shape
    x = x.reshape(n, h * w, c)
    if self.posemb == "sincos2d":
      x = x + jnp.asarray(posemb_sincos_2d(height=h, width=w, dim=c), self.dtype)
    num_cls = int(self.classifier == "token")
    if num_cls:
      cls = self.param("cls", nn.initializers.zeros, (1, 1, c), jnp.float32)
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (n, 1, 1)), x], axis=1)
    registers = None
    if self.num_registers:
      # timm's `reg_token` initialisation.
      registers = self.param("registers", nn.initializers.normal(1e-6), (1, self.num_registers, c), jnp.float32)
      registers = jnp.tile(registers, (n, 1, 1))
    x = Encoder(
      num_layers=self.num_layers,
      mlp_dim=self.mlp_dim,
      num_heads=self.num_heads,
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=self.attention_dropout_rate,
      stochastic_depth=self.stochastic_depth,
      learned_posemb=self.posemb == "learn",
      qk_norm=self.qk_norm,
      layerscale=self.layerscale,
      rope_grid=(h, w) if self.posemb == "rope2d" else None,
      attention=self.attention,
      remat=self.remat,
      scan=self.scan,
      gelu_approximate=self.gelu_approximate,
      dtype=self.dtype,
      name="Transformer",
    )(x, train=train, registers=registers, num_cls=num_cls, posemb_grids=(stored, (h, w)) if self.patch_sizes else None)
    # Registers only carry computation: pooling sees the class token and the patch tokens.
    x = jnp.concatenate([x[:, :num_cls], x[:, num_cls + self.num_registers :]], axis=1) if self.num_registers else x
    return self._head(self._pool(x))

  def _check_options(self) -> None:
    """One line naming the bad option and the choices, before anything is built."""
    if self.classifier not in CLASSIFIERS:
      raise ValueError(f"Unknown classifier {self.classifier!r}; choose one of: {', '.join(CLASSIFIERS)}")
    if self.posemb not in POSEMBS:
      raise ValueError(f"Unknown posemb {self.posemb!r}; choose one of: {', '.join(POSEMBS)}")
    if self.attention not in IMPLEMENTATIONS:
      raise ValueError(f"Unknown attention {self.attention!r}; choose one of: {', '.join(IMPLEMENTATIONS)}")
    if self.num_registers < 0:
      raise ValueError(f"num_registers must be 0 or more, got {self.num_registers}")
    if self.patch_sizes is not None and any(int(p) < 1 for p in self.patch_sizes):
      raise ValueError(f"patch_sizes must be positive integers, got {tuple(self.patch_sizes)}")

  def _embed(self, x: Array, *, patch: int) -> Array:
    """The public `embedding`: a p x p stride-p convolution, at `patch` x `patch` when FlexiViT is on."""
    sizes = {self.patch_size, patch, *(self.patch_sizes or ())}
    bad = sorted(p for p in sizes if x.shape[1] % p or x.shape[2] % p)
    if bad:
      raise ValueError(f"Feature map {x.shape[1]}x{x.shape[2]} is not divisible by the patch size {bad[0]}")
    if self.patch_sizes:
      return flexi.FlexiPatchEmbedding(self.hidden_size, self.patch_size, dtype=self.dtype, name="embedding")(
        x, patch=patch
      )
    p = self.patch_size
    # Measured on CPU, XLA's convolution is as fast as a reshape + matmul for ViT-B/16 and ViT-Ti/16 training,
    # and `Conv` runs p = 1 (hybrids) as a matmul.
    return Conv(self.hidden_size, (p, p), (p, p), padding="VALID", use_bias=True, dtype=self.dtype, name="embedding")(x)

  def _pool(self, x: Array) -> Array:
    """The encoded tokens (class token first, if any) pooled to one vector per image."""
    if self.classifier == "token":
      # A static slice: `x[:, 0]` lowers to a gather, which TFLite cannot convert once the batch is polymorphic.
      return jax.lax.index_in_dim(x, 0, axis=1, keepdims=False)
    if self.classifier == "gap":
      return jnp.mean(x, axis=1)
    return MAPHead(
      mlp_dim=self.mlp_dim, num_heads=self.num_heads, attention=self.attention, dtype=self.dtype, name="MAPHead_0"
    )(x)

  def _head(self, x: Array) -> Array:
    """Optional pre-logits layer, the sown features, and the zero-initialised classifier."""
    if self.representation_size is not None:
      x = nn.tanh(nn.Dense(self.representation_size, dtype=self.dtype, name="pre_logits")(x))
    x = x.astype(jnp.float32)
    self.sow("intermediates", "pre_logits", x)
    if not self.num_classes:
      return x
    return nn.Dense(
      self.num_classes,
      kernel_init=nn.initializers.zeros,
      bias_init=nn.initializers.constant(self.head_bias_init),
      name="head",
    )(x)


def _train_at_patch_size(module: VisionTransformer, images: Array, *, patch: int) -> Array:
  """A branch of FlexiViT training: the training forward pass at one patch size."""
  return module.forward(images, patch=patch, train=True)
