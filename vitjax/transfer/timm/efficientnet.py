"""timm's EfficientNet / MobileNetV2 / MobileNetV3 state dict -> `models.efficientnet` and `models.mobilenet`.

`blocks.{i}.{j}.se.conv_reduce` is `blocks_{i}_{j}/se/conv_reduce`; `conv_stem`, `bn1`, `conv_head`, `bn2` keep
their names and `classifier` is the head. A module with running statistics is a BatchNorm, a `conv*` one a
convolution; anything else is left for the importer to report.
"""

import re
from collections.abc import Mapping

import numpy as np

from vitjax.transfer.timm import layout

_BLOCK = re.compile(r"blocks\.(\d+)\.(\d+)\.")


def matches(state: Mapping[str, np.ndarray]) -> bool:
  """True for timm's EfficientNet-builder keys: `conv_stem`, `bn1` and blocks `blocks.0.0.conv_dw`."""
  return "conv_stem.weight" in state and "bn1.running_mean" in state and "blocks.0.0.conv_dw.weight" in state


def convert(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The state dict as flat Flax variables, module by module (each found by its `weight`)."""
  out = {}
  for key in state:
    module, _, leaf = key.rpartition(".")
    if leaf != "weight":
      continue
    target = _BLOCK.sub(r"blocks_\1_\2/", module).replace(".", "/")
    if module == "classifier":
      out.update(layout.dense(state, module, "head"))
    elif f"{module}.running_mean" in state:
      out.update(layout.batch_norm(state, module, target))
    elif module.rpartition(".")[2].startswith("conv"):
      out.update(layout.conv(state, module, target))
  return out
