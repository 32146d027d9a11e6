"""Vision Transformer (Dosovitskiy et al. 2021) with the parameter names of the public vit_jax checkpoints.

Tree (ViT-B/16): `embedding/{kernel (16,16,3,768), bias}`, `cls`, `Transformer/posembed_input/pos_embedding`,
`Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out}, LayerNorm_1,
MlpBlock_0/{Dense_0,Dense_1}}`, `Transformer/encoder_norm`, optional `pre_logits`, `MAPHead_0`, and `head`.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.models.layers import Conv, DropPath

Array = jax.Array
Dtype = Any

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
POSEMBS = ("learn", "sincos2d")


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


class MultiHeadDotProductAttention(nn.Module):
  """Multi-head attention with flax's parameter layout (`query/key/value` (D, H, D/H), `out` (H, D/H, D)).

  Logits are scaled by 1/sqrt(head_dim) and the softmax runs in float32 whatever the compute
  dtype. The attention weights are sown as `intermediates/attention_weights` (batch, heads, q, k).
  """

  num_heads: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, *, deterministic: bool) -> Array:
    dim = inputs_q.shape[-1]
    if dim % self.num_heads:
      raise ValueError(f"Hidden size {dim} is not divisible by {self.num_heads} heads")
    head_dim = dim // self.num_heads
    dense = lambda name: nn.DenseGeneral(  # noqa: E731
      features=(self.num_heads, head_dim),
      axis=-1,
      dtype=self.dtype,
      name=name,
      kernel_init=nn.initializers.xavier_uniform(),
    )
    query = dense("query")(inputs_q) / jnp.asarray(math.sqrt(head_dim), self.dtype)
    key = dense("key")(inputs_kv)
    value = dense("value")(inputs_kv)
    logits = jnp.einsum("nqhd,nkhd->nhqk", query, key)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    self.sow("intermediates", "attention_weights", weights)
    weights = nn.Dropout(rate=self.dropout_rate)(weights, deterministic=deterministic)
    x = jnp.einsum("nhqk,nkhd->nqhd", weights, value)
    return nn.DenseGeneral(
      features=dim, axis=(-2, -1), dtype=self.dtype, name="out", kernel_init=nn.initializers.xavier_uniform()
    )(x)


class MlpBlock(nn.Module):
  """Transformer feed-forward block: Dense, GELU, dropout, Dense, dropout."""

  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    inits = dict(kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.normal(stddev=1e-6))
    dim = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0", **inits)(x)
    # vit_jax and big_vision call `nn.gelu` with its default, the tanh approximation.
    x = nn.gelu(x, approximate=True)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    x = nn.Dense(dim, dtype=self.dtype, name="Dense_1", **inits)(x)
    return nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)


class Encoder1DBlock(nn.Module):
  """Pre-LayerNorm transformer block; both residual branches go through drop-path."""

  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, *, deterministic: bool) -> Array:
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")(inputs)
    x = MultiHeadDotProductAttention(
      num_heads=self.num_heads,
      dropout_rate=self.attention_dropout_rate,
      dtype=self.dtype,
      name="MultiHeadDotProductAttention_0",
    )(x, x, deterministic=deterministic)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    x = inputs + DropPath(self.drop_path_rate)(x, deterministic=deterministic)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_1")(x)
    y = MlpBlock(mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate, dtype=self.dtype, name="MlpBlock_0")(
      y, deterministic=deterministic
    )
    return x + DropPath(self.drop_path_rate)(y, deterministic=deterministic)


class Encoder(nn.Module):
  """Learned position embedding (optional), dropout, `num_layers` blocks, final LayerNorm.

  Drop-path rates rise linearly from 0 in the first block to `stochastic_depth` in the last.
  """

  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  learned_posemb: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if self.learned_posemb:
      x = AddPositionEmbs(name="posembed_input")(x)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
    for i in range(self.num_layers):
      x = Encoder1DBlock(
        mlp_dim=self.mlp_dim,
        num_heads=self.num_heads,
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        drop_path_rate=self.stochastic_depth * i / max(self.num_layers - 1, 1),
        dtype=self.dtype,
        name=f"encoderblock_{i}",
      )(x, deterministic=not train)
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="encoder_norm")(x)


class AddPositionEmbs(nn.Module):
  """Adds a learned (1, tokens, hidden) position embedding, initialised N(0, 0.02) as BERT."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1,) + x.shape[1:], jnp.float32)
    return x + pe.astype(x.dtype)


class MAPHead(nn.Module):
  """Multihead attention pooling (big_vision): a learned probe token attends to all tokens."""

  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n, _, dim = x.shape
    probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, dim), jnp.float32)
    probe = jnp.tile(probe.astype(x.dtype), (n, 1, 1))
    x = MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype, name="MultiHeadDotProductAttention_0")(
      probe, x, deterministic=True
    )
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")(x)
    x = x + MlpBlock(mlp_dim=self.mlp_dim, dtype=self.dtype, name="MlpBlock_0")(y, deterministic=True)
    return jax.lax.index_in_dim(x, 0, axis=1, keepdims=False)  # A slice, not a gather: see VisionTransformer.


class VisionTransformer(nn.Module):
  """ViT classifier: images (N, H, W, C) -> float32 logits (N, num_classes).

  `num_classes` 0 or None drops the head and returns the pooled (pre-logits) features.
  `dtype` is the compute dtype; parameters are always float32. Sows `pre_logits` into
  `intermediates`.
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
  dtype: Dtype = jnp.float32

  def stem(self, images: Array, *, train: bool) -> Array:
    """Feature map that the patch embedding reads; the images themselves for a plain ViT."""
    del train
    return images

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Array:
    if self.classifier not in CLASSIFIERS:
      raise ValueError(f"Unknown classifier {self.classifier!r}; choose one of: {', '.join(CLASSIFIERS)}")
    if self.posemb not in POSEMBS:
      raise ValueError(f"Unknown posemb {self.posemb!r}; choose one of: {', '.join(POSEMBS)}")
    x = self.stem(images.astype(self.dtype), train=train)
    p = self.patch_size
    if x.shape[1] % p or x.shape[2] % p:
      raise ValueError(f"Feature map {x.shape[1]}x{x.shape[2]} is not divisible by the patch size {p}")
    # A p x p stride-p convolution, the public `embedding`; measured on CPU, XLA's convolution is as fast as
    # a reshape + matmul for ViT-B/16 and ViT-Ti/16 training, and `Conv` runs p = 1 (hybrids) as a matmul.
    x = Conv(self.hidden_size, (p, p), (p, p), padding="VALID", use_bias=True, dtype=self.dtype, name="embedding")(x)
    n, h, w, c = x.shape
    x = x.reshape(n, h * w, c)
    if self.posemb == "sincos2d":
      x = x + jnp.asarray(posemb_sincos_2d(height=h, width=w, dim=c), self.dtype)
    if self.classifier == "token":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, c), jnp.float32)
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (n, 1, 1)), x], axis=1)

    x = Encoder(
      num_layers=self.num_layers,
      mlp_dim=self.mlp_dim,
      num_heads=self.num_heads,
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=self.attention_dropout_rate,
      stochastic_depth=self.stochastic_depth,
      learned_posemb=self.posemb == "learn",
      dtype=self.dtype,
      name="Transformer",
    )(x, train=train)

    if self.classifier == "token":
      # A static slice: `x[:, 0]` lowers to a gather, which TFLite cannot convert once the batch is polymorphic.
      x = jax.lax.index_in_dim(x, 0, axis=1, keepdims=False)
    elif self.classifier == "gap":
      x = jnp.mean(x, axis=1)
    else:
      x = MAPHead(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dtype=self.dtype, name="MAPHead_0")(x)

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
