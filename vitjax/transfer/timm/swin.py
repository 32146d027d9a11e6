"""timm's SwinTransformer state dict -> `models.swin.SwinTransformer` (`swin_t`, `swin_s`, `swin_b`).

The tree carries timm's names, '.' becoming '/' and `layers.{i}`/`blocks.{j}` becoming `layers_{i}`/`blocks_{j}`.
Files of timm before 0.9 hold patch merging at the end of stages 0-2 (`layers.{i}.downsample`) and the head as
`head.weight`; they are moved to the start of stages 1-3 and to `head`. The relative-position indices and
attention masks some files carry are derived from the window size here, so they are dropped.
"""

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from vitjax.transfer.timm import layout, registry

_BLOCK = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.")
_DERIVED = re.compile(r".*\.(relative_position_index|attn_mask)$")


def matches(state: Mapping[str, np.ndarray]) -> bool:
  return "patch_embed.proj.weight" in state and "layers.0.blocks.0.attn.relative_position_bias_table" in state


def convert(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  for key in [k for k in state if _DERIVED.fullmatch(k)]:
    state[key]  # Read, so not reported as unused: the model derives these buffers from the window size.
  out = {**layout.conv(state, "patch_embed.proj", "patch_embed/proj")}
  out.update(layout.norm(state, "patch_embed.norm", "patch_embed/norm"))
  for stage, block in sorted({(int(m[1]), int(m[2])) for m in map(_BLOCK.match, state) if m}):
    out.update(_block(state, f"layers.{stage}.blocks.{block}", f"layers_{stage}/blocks_{block}"))
  # Before timm 0.9 stage i ended with the merging that now starts stage i + 1.
  shift = 1 if "layers.0.downsample.reduction.weight" in state else 0
  stages = {int(m[1]) for m in map(re.compile(r"layers\.(\d+)\.downsample\.").match, state) if m}
  for stage in sorted(stages):
    target = f"layers_{stage + shift}/downsample"
    out.update(layout.norm(state, f"layers.{stage}.downsample.norm", f"{target}/norm"))
    out.update(layout.dense(state, f"layers.{stage}.downsample.reduction", f"{target}/reduction"))
  out.update(layout.norm(state, "norm", "norm"))
  for source in ("head.fc", "head"):
    if f"{source}.weight" in state:
      out.update(layout.dense(state, source, "head"))
  return out


def _block(state: Mapping[str, np.ndarray], source: str, target: str) -> dict[str, np.ndarray]:
  out = {f"params/{target}/attn/relative_position_bias_table": state[f"{source}.attn.relative_position_bias_table"]}
  for name in ("norm1", "norm2"):
    out.update(layout.norm(state, f"{source}.{name}", f"{target}/{name}"))
  for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
    out.update(layout.dense(state, f"{source}.{name}", f"{target}/{name.replace('.', '/')}"))
  return out


def _torch_module(path: str) -> str:
  path = re.sub(r"^layers_(\d+)/", r"layers.\1.", path)
  path = re.sub(r"blocks_(\d+)/", r"blocks.\1.", path)
  return "head.fc" if path == "head" else path.replace("/", ".")


_ARGS = ("embed_dim", "depths", "num_heads", "window_size", "patch_size", "mlp_ratio")


def options(architecture: str, model_args: Mapping[str, Any]) -> dict[str, Any]:
  """timm's Swin `model_args` (sizes, window, patch) as `SwinTransformer` options; `img_size` needs none."""
  registry.check_args(architecture, model_args, (*_ARGS, "img_size"))
  return {k: tuple(v) if isinstance(v, list) else v for k, v in model_args.items() if k in _ARGS}


def model_args(architecture: str, model: Any, image_size: int) -> dict[str, Any]:
  """Every size of `model` and the input size, so that any `SwinTransformer` builds in timm."""
  del architecture
  out = {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(model, k)) for k in _ARGS)}
  return {**out, "img_size": image_size}


registry.register_renamed(
  "swin",
  _torch_module,
  priority=60,
  matches=matches,
  convert=convert,
  architectures={
    "swin_tiny_patch4_window7_224": "swin_t",
    "swin_small_patch4_window7_224": "swin_s",
    "swin_base_patch4_window7_224": "swin_b",
  },
  options=options,
  model_args=model_args,
)
