"""The pre-LayerNorm transformer block of ViT, DeiT and the hybrids (vit_jax's parameter names), and the
multihead attention pooling head."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.models.attention import MultiHeadDotProductAttention
from vitjax.models.layers import DropPath, Layer, gelu

Array = jax.Array


class MlpBlock(Layer):
  """Transformer feed-forward block: Dense, GELU, dropout, Dense, dropout."""

  mlp_dim: int
  dropout_rate: float = 0.0
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    inits = dict(kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.normal(stddev=1e-6))
    dim = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0", **inits)(x)
    # vit_jax and big_vision call `nn.gelu` with its default, the tanh approximation; timm uses the exact GELU.
    x = gelu(x, approximate=self.gelu_approximate)
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


class Encoder1DBlock(Layer):
  """Pre-LayerNorm transformer block; both residual branches go through LayerScale (optional) and drop-path.

  `drop_path_rate` may come as a call argument instead (a traced per-block rate when the blocks are scanned);
  `mask` (batch, 1, 1, tokens), False on padding, keeps every token from attending to padding (NaFlex).
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
  qkv_bias: bool = True

  @nn.compact
  def __call__(
    self, inputs: Array, deterministic: bool = True, drop_path_rate: Array | None = None, mask: Array | None = None
  ) -> Array:
    rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")(inputs)
    x = MultiHeadDotProductAttention(
      num_heads=self.num_heads,
      dropout_rate=self.attention_dropout_rate,
      qk_norm=self.qk_norm,
      rope_grid=self.rope_grid,
      implementation=self.attention,
      qkv_bias=self.qkv_bias,
      dtype=self.dtype,
      name="MultiHeadDotProductAttention_0",
    )(x, x, deterministic=deterministic, mask=mask)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    if self.layerscale is not None:
      x = LayerScale(self.layerscale, name="LayerScale_0")(x)
    x = inputs + DropPath(rate)(x, deterministic=deterministic)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_1")(x)
    mlp = MlpBlock(self.mlp_dim, self.dropout_rate, self.gelu_approximate, dtype=self.dtype, name="MlpBlock_0")
    y = mlp(y, deterministic=deterministic)
    if self.layerscale is not None:
      y = LayerScale(self.layerscale, name="LayerScale_1")(y)
    return x + DropPath(rate)(y, deterministic=deterministic)


class MAPHead(Layer):
  """Multihead attention pooling (big_vision): a learned probe token attends to all tokens, or to those where
  `mask` (batch, 1, 1, tokens) is True."""

  mlp_dim: int
  num_heads: int
  attention: str = "xla"
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    n, _, dim = x.shape
    probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, dim), jnp.float32)
    probe = jnp.tile(probe.astype(x.dtype), (n, 1, 1))
    x = MultiHeadDotProductAttention(
      num_heads=self.num_heads, implementation=self.attention, dtype=self.dtype, name="MultiHeadDotProductAttention_0"
    )(probe, x, deterministic=True, mask=mask)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")(x)
    mlp = MlpBlock(mlp_dim=self.mlp_dim, gelu_approximate=self.gelu_approximate, dtype=self.dtype, name="MlpBlock_0")
    x = x + mlp(y, deterministic=True)
    return jax.lax.index_in_dim(x, 0, axis=1, keepdims=False)  # A slice, not a gather: see VisionTransformer.
