"""Attention rollout (Abnar & Zuidema 2020) and the last block's attention maps of a ViT or hybrid.

The attention weights come from the `intermediates` collection the model sows into (recorded when the collection
is mutable), so the model runs unchanged. Rollout averages the heads, adds the residual connection as an identity
(0.5 A + 0.5 I, rows renormalised) and multiplies through the blocks; the pooled output reads its row: the class
token's for the `token` classifier, the mean of all rows for `gap`, the probe's attention for `map`.
"""

import re

import jax
import jax.numpy as jnp
from flax import traverse_util

from vitjax.errors import ConfigError
from vitjax.explain import maps
from vitjax.explain.scorer import Scorer

_BLOCK = re.compile(r"Transformer/encoderblock_(\d+)/.*attention_weights")
_PROBE = "MAPHead_0/MultiHeadDotProductAttention_0/attention_weights"


def attention_weights(scorer: Scorer, pixels: jax.Array) -> tuple[list[jax.Array], jax.Array | None]:
  """(every encoder block's attention [N, heads, T, T] in depth order, the MAP head's probe attention
  [N, heads, 1, T] or None) of one forward pass; ValueError for a model without attention."""
  _, state = scorer.apply(pixels, mutable=["intermediates"])
  flat = traverse_util.flatten_dict(state.get("intermediates", {}), sep="/")
  blocks = sorted((int(m[1]), value[0]) for key, value in flat.items() if (m := _BLOCK.fullmatch(key)))
  if not blocks:
    raise ConfigError(f"Model {type(scorer.model).__name__} sows no attention weights: attention maps need a ViT.")
  probe = flat.get(_PROBE)
  return [weights.astype(jnp.float32) for _, weights in blocks], None if probe is None else probe[0]


def _readout(matrix: jax.Array, probe: jax.Array | None, prefix: int, readout: tuple[int, ...] = ()) -> jax.Array:
  """The pooled output's row over the patch tokens [T - prefix] of a token-to-token matrix [T, T]: `probe` [1, T]'s
  for a MAP head, the mean of the `readout` rows (class and distillation tokens), or else of the patch rows (gap)."""
  if probe is not None:
    row = (probe @ matrix)[0]
  else:
    row = jnp.mean(matrix[jnp.asarray(readout)] if readout else matrix[prefix:], axis=0)
  return row[prefix:]


def _full_probe(probe: jax.Array | None, tokens: int) -> jax.Array | None:
  """A MAP probe's attention over the tokens it pools (registers are dropped before it) as attention over all
  `tokens` of the blocks: zero on the prefix tokens it never sees."""
  return None if probe is None else jnp.pad(probe, [(0, 0)] * (probe.ndim - 1) + [(tokens - probe.shape[-1], 0)])


def rollout(
  blocks: list[jax.Array], probe: jax.Array | None, *, prefix: int, readout: tuple[int, ...] = ()
) -> jax.Array:
  """How much each patch token [T - prefix] feeds the pooled output through all blocks: per block the head-averaged
  attention [heads, T, T] of one image plus the identity of the residual path, multiplied from the first block up;
  `probe` [heads, 1, T] is a MAP head's attention, `prefix` the tokens before the patches (`readout` of them read by
  the head)."""
  tokens = blocks[0].shape[-1]
  flow = jnp.eye(tokens)
  for weights in blocks:
    mixed = 0.5 * jnp.mean(weights, axis=0) + 0.5 * jnp.eye(tokens)
    flow = (mixed / jnp.sum(mixed, axis=-1, keepdims=True)) @ flow
  return _readout(flow, None if probe is None else jnp.mean(probe, axis=0), prefix, readout)


@jax.jit
def attention_maps(scorer: Scorer, image: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(attention rollout [H, W], the last attention's map per head [heads, H, W]) of one image: the last encoder
  block's attention of the pooled output (a MAP head's probe, if the model has one)."""
  blocks, probe = attention_weights(scorer, image[None])
  blocks = [weights[0] for weights in blocks]
  probe = _full_probe(None if probe is None else probe[0], blocks[0].shape[-1])
  prefix, readout = maps.prefix_tokens(scorer.model), maps.readout_tokens(scorer.model)
  flow = rollout(blocks, probe, prefix=prefix, readout=readout)
  if probe is not None:
    per_head = probe[:, 0, prefix:]
  else:
    per_head = jnp.stack([_readout(weights, None, prefix, readout) for weights in blocks[-1]])
  grid = lambda row: maps.upsample(row.reshape(maps.grid_shape(row.shape[0], image.shape)), image.shape)
  return grid(flow), jax.vmap(grid)(per_head)
