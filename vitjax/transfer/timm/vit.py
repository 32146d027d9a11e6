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
from typing import Any

import numpy as np

from vitjax import models
from vitjax.errors import ConfigError
from vitjax.models import vit as vit_model
from vitjax.transfer.timm import layout, registry

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


def to_timm(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Flat Flax variables of a ViT or DeiT as timm's state dict: `convert`'s inverse. Registers get position slots
  of zeros after the class tokens (timm's default layout), which `convert` folds back exactly."""
  flat = {k: np.asarray(v, np.float32) for k, v in _per_block(flat).items()}
  out = {timm: flat[f"params/{ours}"] for timm, ours in _TOKENS.items() if f"params/{ours}" in flat}
  pos = flat["params/Transformer/posembed_input/pos_embedding"]
  if "reg_token" in out:
    prefix = ("params/cls" in flat) + ("params/dist" in flat)
    slots = np.zeros((1, out["reg_token"].shape[1], pos.shape[2]), np.float32)
    pos = np.concatenate([pos[:, :prefix], slots, pos[:, prefix:]], axis=1)
  out["pos_embed"] = pos
  blocks = sorted({int(m[1]) for m in map(re.compile(r"params/Transformer/encoderblock_(\d+)/").match, flat) if m})
  for i in blocks:
    out.update(_block_to_timm(flat, f"params/Transformer/encoderblock_{i}", f"blocks.{i}"))
  modules = {"embedding": "patch_embed.proj", "Transformer/encoder_norm": "norm", "head": "head"}
  modules["head_dist"] = "head_dist"
  return {**out, **layout.to_torch(flat, modules.get)}


def _per_block(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`flat` with blocks stacked on a leading depth axis (a model with `scan`) split into one key per block."""
  stacked = "params/Transformer/encoderblock/"
  out = {k: v for k, v in flat.items() if not k.startswith(stacked)}
  for key in (k for k in flat if k.startswith(stacked)):
    rest = key[len(stacked) :]
    out.update({f"params/Transformer/encoderblock_{i}/{rest}": layer for i, layer in enumerate(flat[key])})
  return out


def _block_to_timm(flat: dict[str, np.ndarray], source: str, target: str) -> dict[str, np.ndarray]:
  attn = f"{source}/MultiHeadDotProductAttention_0"
  dim = flat[f"{attn}/query/kernel"].shape[0]
  qkv = [flat[f"{attn}/{name}/kernel"].reshape(dim, -1).T for name in ("query", "key", "value")]
  out = {
    f"{target}.attn.qkv.weight": np.ascontiguousarray(np.concatenate(qkv)),
    f"{target}.attn.qkv.bias": np.concatenate(
      [flat[f"{attn}/{n}/bias"].reshape(-1) for n in ("query", "key", "value")]
    ),
    f"{target}.attn.proj.weight": np.ascontiguousarray(flat[f"{attn}/out/kernel"].reshape(-1, dim).T),
    f"{target}.attn.proj.bias": flat[f"{attn}/out/bias"],
  }
  for k in (1, 2):
    if f"{source}/LayerScale_{k - 1}/scale" in flat:
      out[f"{target}.ls{k}.gamma"] = flat[f"{source}/LayerScale_{k - 1}/scale"]
  modules = {"LayerNorm_0": "norm1", "LayerNorm_1": "norm2", "MlpBlock_0/Dense_0": "mlp.fc1"}
  modules.update({"MlpBlock_0/Dense_1": "mlp.fc2", "MultiHeadDotProductAttention_0/query_norm": "attn.q_norm"})
  modules["MultiHeadDotProductAttention_0/key_norm"] = "attn.k_norm"
  block = {k: v for k, v in flat.items() if k.startswith(f"{source}/")}
  prefix = len(source) - len("params")  # Paths relative to the block, for `modules`.
  named = layout.to_torch(block, lambda path: modules.get(path[prefix:]) and f"{target}.{modules[path[prefix:]]}")
  return {**out, **named}


_SIZES = {"tiny": "ti", "small": "s", "base": "b", "large": "l", "huge": "h", "giant": "g"}
_VITS = (
  "tiny_patch16_224 tiny_patch16_384 small_patch16_224 small_patch16_384 small_patch32_224 small_patch32_384 "
  "small_patch8_224 base_patch16_224 base_patch16_384 base_patch32_224 base_patch32_384 base_patch8_224 "
  "large_patch16_224 large_patch16_384 large_patch32_384 large_patch14_224 huge_patch14_224 giant_patch14_224"
).split()
_ARCHITECTURES = {
  **{f"vit_{n}": "vit_{}{}".format(_SIZES[n.split("_")[0]], re.search(r"patch(\d+)", n)[1]) for n in _VITS},
  **{f"deit_{size}_patch16_224": f"vit_{_SIZES[size]}16" for size in ("tiny", "small", "base")},
  **{f"deit_{size}_distilled_patch16_224": f"deit_{_SIZES[size]}16_distilled" for size in ("tiny", "small", "base")},
}
_STRUCTURE = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias")
_OPTIONS = ("class_token", "global_pool", "fc_norm", "reg_tokens", "no_embed_class", "qk_norm", "init_values")


def options(architecture: str, model_args: Mapping[str, Any]) -> dict[str, Any]:
  """timm's ViT `model_args` as options of the registered model: structure overrides, pooling (`token`, or `avg`
  without class token and without `fc_norm`), registers, QK-norm, layer scale and GELU (exact unless
  `act_layer="gelu_tanh"`)."""
  distilled = architecture.startswith("deit_") and "distilled" in architecture
  registry.check_args(architecture, model_args, _STRUCTURE if distilled else (*_STRUCTURE, *_OPTIONS, "act_layer"))
  out = {new: model_args[old] for old, new in _RENAMES.items() if old in model_args}
  if "mlp_ratio" in model_args:
    width = out.get("hidden_size") or models.build(_ARCHITECTURES[architecture], num_classes=None).hidden_size
    out["mlp_dim"] = round(width * model_args["mlp_ratio"])
  if distilled:
    return out
  if model_args.get("act_layer", "gelu") not in ("gelu", "gelu_tanh"):
    raise ConfigError(
      f"{architecture!r} with act_layer={model_args['act_layer']!r}: only gelu and gelu_tanh load here."
    )
  out["gelu_approximate"] = model_args.get("act_layer") == "gelu_tanh"
  pooling = (model_args.get("global_pool", "token"), model_args.get("class_token", True), model_args.get("fc_norm"))
  if pooling[:2] == ("avg", False) and pooling[2] is False:
    out["classifier"] = "gap"
  elif pooling[:2] != ("token", True):
    raise ConfigError(
      f"{architecture!r} with global_pool, class_token, fc_norm = {pooling}: only class-token pooling, or 'avg' "
      "pooling without class token and with fc_norm=False, load here."
    )
  if model_args.get("init_values") is not None:
    out["layerscale"] = model_args["init_values"]
  return {**out, "num_registers": model_args.get("reg_tokens", 0), "qk_norm": bool(model_args.get("qk_norm"))}


_RENAMES = {"patch_size": "patch_size", "embed_dim": "hidden_size", "depth": "num_layers", "num_heads": "num_heads"}


def model_args(architecture: str, model: Any, image_size: int) -> dict[str, Any]:
  """Everything timm needs to build `model` (a `VisionTransformer` or DeiT) whatever its size; a ViT option timm's
  ViT does not have is a ConfigError naming it."""
  out = {new: getattr(model, old) for new, old in zip(_RENAMES, _RENAMES.values())}
  out.update(img_size=image_size, mlp_ratio=model.mlp_dim / model.hidden_size)
  if not isinstance(model, vit_model.VisionTransformer):
    return out
  if model.posemb not in ("learn", "sincos2d"):
    raise ConfigError(f"{architecture}: timm's ViT has no posemb={model.posemb!r}; publish a model without.")
  unsupported = {"representation_size": None}
  for name, default in unsupported.items():
    if getattr(model, name) != default:
      raise ConfigError(f"{architecture}: timm's ViT has no {name}={getattr(model, name)!r}; publish a model without.")
  if model.classifier == "map":
    raise ConfigError(f"{architecture}: the MAP head (classifier='map') has no place in timm's ViT layout here.")
  if model.classifier == "gap":
    out.update(class_token=False, global_pool="avg", fc_norm=False)
  if model.gelu_approximate:
    out["act_layer"] = "gelu_tanh"
  if model.num_registers:
    out["reg_tokens"] = model.num_registers
  if model.qk_norm:
    out["qk_norm"] = True
  if model.layerscale is not None:
    out["init_values"] = model.layerscale
  return out


def complete(model: Any, flat: dict[str, np.ndarray], image_size: tuple[int, int]) -> dict[str, np.ndarray]:
  """A fixed sin-cos position embedding as the learned table timm stores: the same values on the patches, zero on
  the class token (which the fixed one leaves without position)."""
  if getattr(model, "posemb", "learn") != "sincos2d":
    return flat
  grid = (image_size[0] // model.patch_size, image_size[1] // model.patch_size)
  table = vit_model.posemb_sincos_2d(height=grid[0], width=grid[1], dim=model.hidden_size)
  if model.classifier == "token":
    table = np.concatenate([np.zeros((1, 1, model.hidden_size), np.float32), table], axis=1)
  return {**flat, "params/Transformer/posembed_input/pos_embedding": table}


def publish_as(name: str) -> str | None:
  """Any parsed ViT name (`vit_micro4`): the architecture of its width class, the model_args saying the rest."""
  match = re.fullmatch(r"vit_([a-z]+)(\d+)", name)
  if not match or match[1] not in vit_model.VARIANTS:
    return None
  size = {v: k for k, v in _SIZES.items()}.get(match[1], "tiny")
  return f"vit_{size}_patch16_224"


registry.register(
  registry.Family(
    "vit",
    priority=110,
    matches=matches,
    convert=convert,
    to_timm=to_timm,
    architectures=_ARCHITECTURES,
    options=options,
    model_args=model_args,
    publish_as=publish_as,
    complete=complete,
    equivalent=(("posemb", "sincos2d", "learn"),),
  )
)
