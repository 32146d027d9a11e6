"""timm's EfficientNet / MobileNetV2 / MobileNetV3 state dict -> `models.efficientnet` and `models.mobilenet`.

`blocks.{i}.{j}.se.conv_reduce` is `blocks_{i}_{j}/se/conv_reduce`; `conv_stem`, `bn1`, `conv_head`, `bn2` keep
their names and `classifier` is the head. A module with running statistics is a BatchNorm, a `conv*` one a
convolution; anything else is left for the importer to report.
"""

import re
from collections.abc import Mapping

import numpy as np

from vitjax.transfer.timm import layout, registry

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


def _torch_module(path: str) -> str:
  return "classifier" if path == "head" else re.sub(r"^blocks_(\d+)_(\d+)/", r"blocks.\1.\2.", path).replace("/", ".")


registry.register_renamed(
  "efficientnet",
  _torch_module,
  priority=90,
  matches=matches,
  convert=convert,
  architectures={
    **{f"efficientnet_b{i}": f"efficientnet_b{i}" for i in range(8)},
    "mobilenetv2_100": "mobilenet_v2",
    "mobilenetv3_large_100": "mobilenet_v3_large",
    "mobilenetv3_small_100": "mobilenet_v3_small",
  },
)
