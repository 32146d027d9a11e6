"""timm's (and torchvision's) ResNet state dict -> `models.resnet.ResNet` (`resnet18` ... `resnet152`) and the CIFAR
ResNets (`resnet20` ... `resnet110`).

`layer{i}.{j}.conv1` is `layer{i}/block{j}/conv1`, `downsample.0`/`downsample.1` the shortcut's conv and BatchNorm,
`fc` the head.
"""

import re
from collections.abc import Mapping

import numpy as np

from vitjax.transfer.timm import layout, registry

_BLOCK = re.compile(r"layer(\d)\.(\d+)\.")


def matches(state: Mapping[str, np.ndarray]) -> bool:
  return "conv1.weight" in state and "bn1.running_mean" in state and "layer1.0.conv1.weight" in state


def convert(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {**layout.conv(state, "conv1", "conv1"), **layout.batch_norm(state, "bn1", "bn1")}
  for stage, block in sorted({(int(m[1]), int(m[2])) for m in map(_BLOCK.match, state) if m}):
    source, target = f"layer{stage}.{block}", f"layer{stage}/block{block}"
    for i in (1, 2, 3):
      if f"{source}.conv{i}.weight" in state:
        out.update(layout.conv(state, f"{source}.conv{i}", f"{target}/conv{i}"))
        out.update(layout.batch_norm(state, f"{source}.bn{i}", f"{target}/bn{i}"))
    if f"{source}.downsample.0.weight" in state:
      out.update(layout.conv(state, f"{source}.downsample.0", f"{target}/downsample_conv"))
      out.update(layout.batch_norm(state, f"{source}.downsample.1", f"{target}/downsample_bn"))
  for head in ("fc", "linear"):  # `linear`: the common PyTorch reproduction of the CIFAR ResNets.
    if f"{head}.weight" in state:
      out.update(layout.dense(state, head, "head"))
  return out


def _torch_module(path: str) -> str:
  path = re.sub(r"^layer(\d)/block(\d+)/", r"layer\1.\2.", path)
  return (
    "fc" if path == "head" else path.replace("downsample_conv", "downsample.0").replace("downsample_bn", "downsample.1")
  )


registry.register_renamed(
  "resnet",
  _torch_module,
  priority=10,
  matches=matches,
  convert=convert,
  architectures={f"resnet{depth}": f"resnet{depth}" for depth in (18, 34, 50, 101, 152)},
)
