"""timm's NaFlexVit state dict -> `models.naflexvit.NaFlexVisionTransformer` (`naflexvit_*`).

`embeds.proj` (a Linear over (row, column, channel)-flattened patches) is `embedding`; `embeds.pos_embed`
(1, gh, gw, D) is `pos_embedding` (gh, gw, D), the factorised `embeds.pos_embed_y`/`_x` (1, g, D) are
`pos_embedding_y`/`_x` (g, D); `embeds.cls_token` is `cls`, `embeds.reg_token` `registers`. Blocks, `norm` and
`head` map as timm's ViT's (module `vit`); `fc_norm` is `fc_norm`; `attn_pool` (latent, q, fused kv, proj, norm,
mlp) is `MAPHead_0` (probe, query, key/value, out, LayerNorm_0, MlpBlock_0). The head count comes from the width
as for timm's ViT (head_dim 64, 13 heads for SO150M's 832).
"""

import re
from collections.abc import Mapping

import numpy as np

from vitjax.transfer.timm import layout, registry
from vitjax.transfer.timm import vit as timm_vit

_BLOCK = re.compile(r"blocks\.(\d+)\.")
_ATTN = "MultiHeadDotProductAttention_0"
_TOKENS = {"embeds.cls_token": "cls", "embeds.reg_token": "registers"}
_POSEMBS = {"embeds.pos_embed": "pos_embedding", "embeds.pos_embed_y": "pos_embedding_y"}
_POSEMBS["embeds.pos_embed_x"] = "pos_embedding_x"
_POOL_MODULES = {"norm": "LayerNorm_0", "mlp.fc1": "MlpBlock_0/Dense_0", "mlp.fc2": "MlpBlock_0/Dense_1"}
_MODULES = {"embeds.proj": "embedding", "norm": "Transformer/encoder_norm", "fc_norm": "fc_norm", "head": "head"}


def matches(state: Mapping[str, np.ndarray]) -> bool:
  return "embeds.proj.weight" in state and "blocks.0.attn.qkv.weight" in state


def convert(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  heads = timm_vit.num_heads(state)
  out = {f"params/{ours}": state[theirs] for theirs, ours in _TOKENS.items() if theirs in state}
  out.update({f"params/{ours}": state[theirs][0] for theirs, ours in _POSEMBS.items() if theirs in state})
  for theirs, ours in _MODULES.items():
    if f"{theirs}.weight" in state:
      mapping = layout.norm if "norm" in theirs else layout.dense
      out.update(mapping(state, theirs, ours))
  for i in sorted({int(m[1]) for m in map(_BLOCK.match, state) if m}):
    block = timm_vit._block(state, f"blocks.{i}", f"Transformer/encoderblock_{i}", heads)
    if f"blocks.{i}.attn.qkv.bias" not in state:  # qkv_bias=False: the model has no such biases.
      block = {k: v for k, v in block.items() if not re.search(r"/(query|key|value)/bias$", k)}
    out.update(block)
  if "attn_pool.latent" in state:
    out.update(_attention_pool(state, heads))
  return out


def _attention_pool(state: Mapping[str, np.ndarray], heads: int) -> dict[str, np.ndarray]:
  """timm's AttentionPoolLatent as `MAPHead_0`: the fused kv projection split into key and value."""
  dim = state["attn_pool.q.weight"].shape[1]
  target = f"params/MAPHead_0/{_ATTN}"
  out = {"params/MAPHead_0/probe": state["attn_pool.latent"]}
  kv, kv_bias = state["attn_pool.kv.weight"], state["attn_pool.kv.bias"]
  parts = {"query": (state["attn_pool.q.weight"], state["attn_pool.q.bias"])}
  parts.update(key=(kv[:dim], kv_bias[:dim]), value=(kv[dim:], kv_bias[dim:]))
  for name, (weight, bias) in parts.items():
    out[f"{target}/{name}/kernel"] = weight.T.reshape(dim, heads, dim // heads)
    out[f"{target}/{name}/bias"] = bias.reshape(heads, dim // heads)
  out[f"{target}/out/kernel"] = state["attn_pool.proj.weight"].T.reshape(heads, dim // heads, dim)
  out[f"{target}/out/bias"] = state["attn_pool.proj.bias"]
  for theirs, ours in _POOL_MODULES.items():
    mapping = layout.norm if theirs == "norm" else layout.dense
    out.update(mapping(state, f"attn_pool.{theirs}", f"MAPHead_0/{ours}"))
  return out


def to_timm(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Flat Flax variables of a NaFlex ViT as timm's state dict: `convert`'s inverse."""
  flat = {k: np.asarray(v, np.float32) for k, v in timm_vit._per_block(flat).items()}
  out = {theirs: flat[f"params/{ours}"] for theirs, ours in _TOKENS.items() if f"params/{ours}" in flat}
  out.update({theirs: flat[f"params/{ours}"][None] for theirs, ours in _POSEMBS.items() if f"params/{ours}" in flat})
  blocks = sorted({int(m[1]) for m in map(re.compile(r"params/Transformer/encoderblock_(\d+)/").match, flat) if m})
  for i in blocks:
    source = f"params/Transformer/encoderblock_{i}"
    qkv_bias = f"{source}/{_ATTN}/query/bias" in flat
    if not qkv_bias:  # Zero biases for the ViT mapping, left out of the state dict again below.
      for n in ("query", "key", "value"):
        flat[f"{source}/{_ATTN}/{n}/bias"] = np.zeros(flat[f"{source}/{_ATTN}/{n}/kernel"].shape[1:], np.float32)
    block = timm_vit._block_to_timm(flat, source, f"blocks.{i}")
    out.update({k: v for k, v in block.items() if qkv_bias or not k.endswith("attn.qkv.bias")})
  if "params/MAPHead_0/probe" in flat:
    out.update(_attention_pool_to_timm(flat))
  return {**out, **layout.to_torch(flat, _MODULES_INVERSE.get)}


_MODULES_INVERSE = {ours: theirs for theirs, ours in _MODULES.items()}
_MODULES_INVERSE.update({f"MAPHead_0/{ours}": f"attn_pool.{theirs}" for theirs, ours in _POOL_MODULES.items()})


def _attention_pool_to_timm(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  source = f"params/MAPHead_0/{_ATTN}"
  dim = flat[f"{source}/query/kernel"].shape[0]
  weight = {n: flat[f"{source}/{n}/kernel"].reshape(dim, dim).T for n in ("query", "key", "value")}
  bias = {n: flat[f"{source}/{n}/bias"].reshape(dim) for n in ("query", "key", "value")}
  return {
    "attn_pool.latent": flat["params/MAPHead_0/probe"],
    "attn_pool.q.weight": np.ascontiguousarray(weight["query"]),
    "attn_pool.q.bias": bias["query"],
    "attn_pool.kv.weight": np.ascontiguousarray(np.concatenate([weight["key"], weight["value"]])),
    "attn_pool.kv.bias": np.concatenate([bias["key"], bias["value"]]),
    "attn_pool.proj.weight": np.ascontiguousarray(flat[f"{source}/out/kernel"].reshape(dim, dim).T),
    "attn_pool.proj.bias": flat[f"{source}/out/bias"],
  }


_ARCHITECTURES = {
  name: name
  for name in (
    "naflexvit_base_patch16_gap",
    "naflexvit_base_patch16_par_gap",
    "naflexvit_base_patch16_parfac_gap",
    "naflexvit_base_patch16_map",
    "naflexvit_so150m2_patch16_reg1_gap",
    "naflexvit_so150m2_patch16_reg1_map",
    "naflexvit_base_patch16_siglip",
    "naflexvit_so400m_patch16_siglip",
  )
}

registry.register(
  registry.Family(
    "naflexvit", priority=105, matches=matches, convert=convert, to_timm=to_timm, architectures=_ARCHITECTURES
  )
)
