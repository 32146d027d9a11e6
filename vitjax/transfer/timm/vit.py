"""timm's VisionTransformer (and DeiT) state dict -> `models.vit.VisionTransformer` / `models.deit`'s tree.

`patch_embed.proj` is `embedding`, `cls_token` `cls`, `reg_token` `registers`, `dist_token` `dist`, `pos_embed`
`Transformer/posembed_input/pos_embedding`; block i's `norm1`, `attn.qkv` (split into `query`/`key`/`value`,
(D, heads, head_dim)), `attn.proj` (`out`, (heads, head_dim, D)), `attn.q_norm`/`k_norm`, `ls1`/`ls2`, `norm2`,
`mlp.fc1`/`fc2` go to `Transformer/encoderblock_{i}/...`; `norm` is `Transformer/encoder_norm`; `head`,
`head_dist` the heads. The fused qkv does not record the head count: it comes from the q/k-norm width when the
model has one, else from the ViT variant of that width (head_dim 64 otherwise). Keys nothing here maps (a hybrid
backbone, `fc_norm`, `norm_pre`) are left for the importer to report.
"""

import math
import re
from collections.abc import Mapping

import numpy as np

from vitjax.models import vit as vit_model
from vitjax.transfer.timm import layout

_BLOCK = re.compile(r"blocks\.(\d+)\.")
# Widths whose head_dim is not 64: ViT-micro, -H, -g, and timm's SoViT-400m (1152 = 16 x 72).
_HEADS_BY_WIDTH = {**{v["hidden_size"]: v["num_heads"] for v in vit_model.VARIANTS.values()}, 1152: 16}
_TOKENS = {"cls_token": "cls", "reg_token": "registers", "dist_token": "dist"}


def matches(state: Mapping[str, np.ndarray]) -> bool:
  return "patch_embed.proj.weight" in state and "blocks.0.attn.qkv.weight" in state


def num_heads(state: Mapping[str, np.ndarray]) -> int:
  """The attention head count of a timm ViT state dict (see the module docstring)."""
  width = state["blocks.0.attn.qkv.weight"].shape[1]
  if "blocks.0.attn.q_norm.weight" in state:
    return width // state["blocks.0.attn.q_norm.weight"].shape[0]
  return _HEADS_BY_WIDTH.get(width, max(width // 64, 1))


def convert(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  heads = num_heads(state)
  out = layout.conv(state, "patch_embed.proj", "embedding")
  out.update({f"params/{target}": state[source] for source, target in _TOKENS.items() if source in state})
  if "pos_embed" in state:
    out.update(_posemb(state))
  for i in sorted({int(m[1]) for m in map(_BLOCK.match, state) if m}):
    out.update(_block(state, f"blocks.{i}", f"Transformer/encoderblock_{i}", heads))
  if "norm.weight" in state:
    out.update(layout.norm(state, "norm", "Transformer/encoder_norm"))
  for head in ("head", "head_dist"):
    if f"{head}.weight" in state:
      out.update(layout.dense(state, head, head))
  return out


def _posemb(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`pos_embed` as this ViT's table, which has a slot for each class token (cls, dist) and none for registers.

  timm's `no_embed_class` files (registers, DeiT III) add no position to the class tokens: a zero slot here. A table
  with register slots adds them to the registers: folded into `registers`. Both are exact.
  """
  pos = state["pos_embed"]
  prefix = sum(token in state for token in ("cls_token", "dist_token"))
  registers = state["reg_token"].shape[1] if "reg_token" in state else 0
  out = {}
  if prefix and _is_square(pos.shape[1]):
    pos = np.concatenate([np.zeros((1, prefix, pos.shape[2]), pos.dtype), pos], axis=1)
  elif registers and _is_square(pos.shape[1] - prefix - registers):
    out["params/registers"] = state["reg_token"] + pos[:, prefix : prefix + registers]
    pos = np.concatenate([pos[:, :prefix], pos[:, prefix + registers :]], axis=1)
  return {**out, "params/Transformer/posembed_input/pos_embedding": pos}


def _is_square(n: int) -> bool:
  return n > 0 and math.isqrt(n) ** 2 == n


def _block(state: Mapping[str, np.ndarray], source: str, target: str, heads: int) -> dict[str, np.ndarray]:
  """One encoder block: norms, split qkv and output projection in Flax's per-head layout, layer scales, MLP."""
  attn = f"{target}/MultiHeadDotProductAttention_0"
  out = {**layout.norm(state, f"{source}.norm1", f"{target}/LayerNorm_0")}
  out.update(layout.norm(state, f"{source}.norm2", f"{target}/LayerNorm_1"))
  qkv = state[f"{source}.attn.qkv.weight"]
  dim = qkv.shape[1]
  has_bias = f"{source}.attn.qkv.bias" in state  # Zero biases stand in for timm's `qkv_bias=False`.
  qkv_bias = state[f"{source}.attn.qkv.bias"] if has_bias else np.zeros(3 * dim, qkv.dtype)
  for k, name in enumerate(("query", "key", "value")):
    out[f"params/{attn}/{name}/kernel"] = qkv[k * dim : (k + 1) * dim].T.reshape(dim, heads, dim // heads)
    out[f"params/{attn}/{name}/bias"] = qkv_bias[k * dim : (k + 1) * dim].reshape(heads, dim // heads)
  out[f"params/{attn}/out/kernel"] = state[f"{source}.attn.proj.weight"].T.reshape(heads, dim // heads, dim)
  out[f"params/{attn}/out/bias"] = state[f"{source}.attn.proj.bias"]
  for norm, name in (("q_norm", "query_norm"), ("k_norm", "key_norm")):
    if f"{source}.attn.{norm}.weight" in state:
      out.update(layout.norm(state, f"{source}.attn.{norm}", f"{attn}/{name}"))
  for k in (1, 2):
    if f"{source}.ls{k}.gamma" in state:
      out[f"params/{target}/LayerScale_{k - 1}/scale"] = state[f"{source}.ls{k}.gamma"]
  out.update(layout.dense(state, f"{source}.mlp.fc1", f"{target}/MlpBlock_0/Dense_0"))
  out.update(layout.dense(state, f"{source}.mlp.fc2", f"{target}/MlpBlock_0/Dense_1"))
  return out
