"""Multi-head dot-product attention with flax's parameter layout, optional query/key normalisation and 2-D RoPE,
computed explicitly (attention weights recorded), as `softmax_attention` (the default without a mask) or through
`jax.nn.dot_product_attention` (cuDNN, masks)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.errors import ConfigError
from vitjax.models import rope
from vitjax.models.layers import Layer

Array = jax.Array

# "explicit": einsum + float32 softmax; "xla" / "cudnn": `jax.nn.dot_product_attention` with that implementation
# (cuDNN's fused kernel needs an NVIDIA GPU and bfloat16 or float16 compute).
IMPLEMENTATIONS = ("explicit", "xla", "cudnn")


class MultiHeadDotProductAttention(Layer):
  """Multi-head attention with flax's parameter layout (`query/key/value` (D, H, D/H), `out` (H, D/H, D)).

  Logits are scaled by 1/sqrt(head_dim) and the softmax runs in float32 whatever the compute dtype. `qk_norm`
  LayerNorms queries and keys over head_dim (`query_norm`, `key_norm`, epsilon 1e-6, as timm) before scaling;
  `rope_grid` (h, w) rotates the queries and keys of the last h*w tokens (module `rope`); `qkv_bias` False drops
  the query/key/value biases; a boolean `mask` (broadcastable to (batch, heads, q, k)) hides the keys where it is
  False (NaFlex padding). The attention weights
  are sown as `intermediates/attention_weights` (batch, heads, q, k) on the explicit path, which runs whenever
  `intermediates` is mutable, attention dropout is active, or `implementation` is "explicit".
  """

  num_heads: int
  dropout_rate: float = 0.0
  qk_norm: bool = False
  rope_grid: tuple[int, int] | None = None
  implementation: str = "xla"
  qkv_bias: bool = True

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, *, deterministic: bool, mask: Array | None = None) -> Array:
    dim = inputs_q.shape[-1]
    if dim % self.num_heads:
      raise ConfigError(f"Hidden size {dim} is not divisible by {self.num_heads} heads")
    head_dim = dim // self.num_heads
    dense = lambda name: nn.DenseGeneral(  # noqa: E731
      features=(self.num_heads, head_dim),
      axis=-1,
      dtype=self.dtype,
      name=name,
      kernel_init=nn.initializers.xavier_uniform(),
      use_bias=self.qkv_bias,
    )
    query, key, value = dense("query")(inputs_q), dense("key")(inputs_kv), dense("value")(inputs_kv)
    if self.qk_norm:
      query = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="query_norm")(query)
      key = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="key_norm")(key)
    if self.rope_grid is not None:
      angles = rope.rope_2d_angles(height=self.rope_grid[0], width=self.rope_grid[1], head_dim=head_dim)
      query = rope.apply_rope(query, angles, num_prefix=query.shape[1] - len(angles))
      key = rope.apply_rope(key, angles, num_prefix=key.shape[1] - len(angles))
    query = query / jnp.asarray(math.sqrt(head_dim), self.dtype)
    explicit = (
      self.implementation == "explicit"
      or self.is_mutable_collection("intermediates")
      or (self.dropout_rate > 0 and not deterministic)
    )
    if explicit:
      x = self._explicit(query, key, value, deterministic=deterministic, mask=mask)
    elif self._checked_implementation() == "xla" and mask is None:
      x = softmax_attention(query, key, value)
    else:
      x = jax.nn.dot_product_attention(query, key, value, mask=mask, scale=1.0, implementation=self.implementation)
    return nn.DenseGeneral(
      features=dim, axis=(-2, -1), dtype=self.dtype, name="out", kernel_init=nn.initializers.xavier_uniform()
    )(x)

  def _explicit(self, query: Array, key: Array, value: Array, *, deterministic: bool, mask: Array | None) -> Array:
    """Softmax(q k^T) v with the weights sown and attention dropout applied."""
    logits = jnp.einsum("nqhd,nkhd->nhqk", query, key)
    if mask is not None:
      logits = jnp.where(mask, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    self.sow("intermediates", "attention_weights", weights)
    weights = nn.Dropout(rate=self.dropout_rate)(weights, deterministic=deterministic)
    return jnp.einsum("nhqk,nkhd->nqhd", weights, value)

  def _checked_implementation(self) -> str:
    """The configured implementation; an unknown name fails here, before any attention is computed."""
    if self.implementation not in IMPLEMENTATIONS:
      raise ConfigError(
        f"Unknown attention implementation {self.implementation!r}; choose one of: {', '.join(IMPLEMENTATIONS)}"
      )
    return self.implementation


def softmax_attention(query: Array, key: Array, value: Array) -> Array:
  """softmax(q k^T) v over (batch, tokens, heads, head_dim), heads first and normalised after the value product.

  The same function as `jax.nn.dot_product_attention`'s XLA path (scale already applied to the queries), arranged
  for XLA's CPU backend: its batched dots run fastest with the heads leading, and dividing the (q, head_dim) output
  by the row sums touches less memory than normalising the (q, k) weights; a ViT-Ti train step ran 6.5% faster
  (benchmarks/RESULTS.md). The exponent is taken in float32 whatever the compute dtype.
  """
  query, key, value = (t.transpose(0, 2, 1, 3) for t in (query, key, value))
  logits = jnp.einsum("nhqd,nhkd->nhqk", query, key).astype(jnp.float32)
  exponentials = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  weighted = jnp.einsum("nhqk,nhkd->nhqd", exponentials.astype(value.dtype), value).astype(jnp.float32)
  output = weighted / exponentials.sum(axis=-1, keepdims=True)
  return output.astype(value.dtype).transpose(0, 2, 1, 3)
