"""timm's ConvNeXt state dict -> `models.convnext.ConvNeXt`.

`stem.0`/`stem.1` are `stem_conv`/`stem_norm`, `stages.{i}.downsample.0`/`.1` are `stages_{i}/downsample_norm`/
`downsample_conv`, `stages.{i}.blocks.{j}.mlp.fc1` is `stages_{i}/blocks_{j}/mlp_fc1`, `head.norm`/`head.fc` are
`head_norm`/`head`; layer scale `gamma` keeps its name.
"""

import re
from collections.abc import Mapping

import numpy as np

from vitjax.transfer.timm import layout

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
