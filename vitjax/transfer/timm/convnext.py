"""timm's ConvNeXt state dict -> `models.convnext.ConvNeXt`.

`stem.0`/`stem.1` are `stem_conv`/`stem_norm`, `stages.{i}.downsample.0`/`.1` are `stages_{i}/downsample_norm`/
`downsample_conv`, `stages.{i}.blocks.{j}.mlp.fc1` is `stages_{i}/blocks_{j}/mlp_fc1`, `head.norm`/`head.fc` are
`head_norm`/`head`; layer scale `gamma` keeps its name.
"""

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from vitjax.transfer.timm import layout, registry

_RENAMES = (
  (re.compile(r"^stem\.0$"), "stem_conv"),
  (re.compile(r"^stem\.1$"), "stem_norm"),
  (re.compile(r"^stages\.(\d+)\.downsample\.0$"), r"stages_\1/downsample_norm"),
  (re.compile(r"^stages\.(\d+)\.downsample\.1$"), r"stages_\1/downsample_conv"),
  (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(conv_dw|norm)$"), r"stages_\1/blocks_\2/\3"),
  (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.(fc[12])$"), r"stages_\1/blocks_\2/mlp_\3"),
  (re.compile(r"^head\.norm$"), "head_norm"),
  (re.compile(r"^head\.fc$"), "head"),
)
_GAMMA = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.gamma$")


def matches(state: Mapping[str, np.ndarray]) -> bool:
  """True for timm's ConvNeXt keys: a patchify stem `stem.0` and blocks `stages.0.blocks.0.conv_dw`."""
  return "stem.0.weight" in state and "stages.0.blocks.0.conv_dw.weight" in state


def _target(module: str) -> str | None:
  for pattern, replacement in _RENAMES:
    if pattern.match(module):
      return pattern.sub(replacement, module)
  return None


def convert(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The state dict as flat Flax variables: a 4-d weight is a convolution, a 2-d one a Dense, a 1-d one a
  LayerNorm."""
  out = {}
  for key in state:
    if gamma := _GAMMA.match(key):
      out[f"params/stages_{gamma[1]}/blocks_{gamma[2]}/gamma"] = state[key]
      continue
    module, _, leaf = key.rpartition(".")
    target = _target(module)
    if leaf != "weight" or target is None:
      continue
    mapping = {4: layout.conv, 2: layout.dense, 1: layout.norm}[state[key].ndim]
    out.update(mapping(state, module, target))
  return out


_INVERSE = (
  (re.compile(r"^stem_conv$"), "stem.0"),
  (re.compile(r"^stem_norm$"), "stem.1"),
  (re.compile(r"^stages_(\d+)/downsample_norm$"), r"stages.\1.downsample.0"),
  (re.compile(r"^stages_(\d+)/downsample_conv$"), r"stages.\1.downsample.1"),
  (re.compile(r"^stages_(\d+)/blocks_(\d+)/mlp_(fc[12])$"), r"stages.\1.blocks.\2.mlp.\3"),
  (re.compile(r"^stages_(\d+)/blocks_(\d+)(/(conv_dw|norm))?$"), r"stages.\1.blocks.\2.\4"),
  (re.compile(r"^head_norm$"), "head.norm"),
  (re.compile(r"^head$"), "head.fc"),
)


def _torch_module(path: str) -> str:
  for pattern, replacement in _INVERSE:
    if pattern.match(path):
      return pattern.sub(replacement, path).rstrip(".")  # A block's own `gamma` sits on the block itself.
  return path


def options(architecture: str, model_args: Mapping[str, Any]) -> dict[str, Any]:
  """timm's `depths`, `dims` and `ls_init_value` as `ConvNeXt` options."""
  registry.check_args(architecture, model_args, ("depths", "dims", "ls_init_value"))
  names = {"depths": "depths", "dims": "dims", "ls_init_value": "layer_scale_init"}
  return {names[k]: tuple(v) if isinstance(v, list) else v for k, v in model_args.items() if k in names}


def model_args(architecture: str, model: Any, image_size: int) -> dict[str, Any]:
  """The stage depths and widths (and layer-scale start), so that any `ConvNeXt` builds in timm."""
  del architecture, image_size
  return {"depths": list(model.depths), "dims": list(model.dims), "ls_init_value": model.layer_scale_init}


registry.register_renamed(
  "convnext",
  _torch_module,
  priority=100,
  matches=matches,
  convert=convert,
  architectures={f"convnext_{v}": f"convnext_{v}" for v in ("tiny", "small", "base", "large")},
  options=options,
  model_args=model_args,
)
