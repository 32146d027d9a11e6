"""timm's ResNetV2 state dict (`resnetv2_50x1_bit`, ...) -> `models.resnet.BiTResNet` (`bit_r50x1`, ...).

timm's pre-activation bottleneck `stages.{i}.blocks.{j}` holds `norm1 conv1 norm2 conv2 norm3 conv3` and
`downsample.conv`; BiT names the same units `block{i+1}/unit{j+1:02d}/{a,b,c}/{group_norm,standardized_conv2d}` and
`a/proj`. timm standardises its kernels with epsilon 1e-8 inside the square root, BiT with 1e-10: on real kernels
the two agree to float32 precision.
"""

import re
from collections.abc import Mapping

import numpy as np

from vitjax.transfer.timm import layout, registry

_BLOCK = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.")


def matches(state: Mapping[str, np.ndarray]) -> bool:
  return "stem.conv.weight" in state and "stages.0.blocks.0.norm1.weight" in state


def convert(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = layout.conv(state, "stem.conv", "root_block/standardized_conv2d")
  for stage, block in sorted({(int(m[1]), int(m[2])) for m in map(_BLOCK.match, state) if m}):
    source, target = f"stages.{stage}.blocks.{block}", f"block{stage + 1}/unit{block + 1:02d}"
    for i, unit in enumerate("abc", 1):
      out.update(layout.norm(state, f"{source}.norm{i}", f"{target}/{unit}/group_norm"))
      out.update(layout.conv(state, f"{source}.conv{i}", f"{target}/{unit}/standardized_conv2d"))
    if f"{source}.downsample.conv.weight" in state:
      out.update(layout.conv(state, f"{source}.downsample.conv", f"{target}/a/proj/standardized_conv2d"))
  out.update(layout.norm(state, "norm", "group_norm"))
  if "head.fc.weight" in state:
    out.update(layout.conv(state, "head.fc", "head/conv2d"))
  return out


def _torch_module(path: str) -> str:
  path = {"root_block/standardized_conv2d": "stem.conv", "group_norm": "norm", "head/conv2d": "head.fc"}.get(path, path)
  path = re.sub(r"^block(\d)/unit(\d+)/", lambda m: f"stages.{int(m[1]) - 1}.blocks.{int(m[2]) - 1}/", path)
  path = path.replace("/a/proj/standardized_conv2d", ".downsample.conv")
  for i, unit in enumerate("abc", 1):
    path = path.replace(f"/{unit}/group_norm", f".norm{i}").replace(f"/{unit}/standardized_conv2d", f".conv{i}")
  return path


registry.register_renamed(
  "bit",
  _torch_module,
  priority=20,
  matches=matches,
  convert=convert,
  architectures={
    f"resnetv2_{depth}x{width}_bit": f"bit_r{depth}x{width}"
    for depth, width in [(50, 1), (101, 1), (50, 3), (101, 3), (152, 2), (152, 4)]
  },
)
