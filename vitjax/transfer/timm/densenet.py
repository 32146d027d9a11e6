"""timm's (and torchvision's) DenseNet state dict -> `vitjax.models.densenet`: the module names without
`features.`, `classifier` as `head`."""

import re
from collections.abc import Mapping

import numpy as np

from vitjax.transfer.timm import layout, registry

# Old torchvision files name a dense layer's modules `norm.1`, `conv.2`, ...: today's `norm1`, `conv2`.
_OLD_LAYER_NAME = re.compile(r"(denselayer\d+\.(?:norm|conv))\.([12])$")
_MODULE = re.compile(r"features\.((?:denseblock\d+\.denselayer\d+\.|transition\d+\.)?(?:conv|norm)\d*)")


def matches(state: Mapping[str, np.ndarray]) -> bool:
  """True for DenseNet keys: a stem `features.conv0` and dense layers under `features.denseblock1`."""
  return "features.conv0.weight" in state and any(k.startswith("features.denseblock1.denselayer1.") for k in state)


def convert(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The state dict as flat Flax variables of `DenseNet`: every `conv*` a convolution, every `norm*` a BatchNorm."""
  out = layout.dense(state, "classifier", "head")
  for key in state:
    module, _, kind = key.rpartition(".")
    match = _MODULE.fullmatch(_OLD_LAYER_NAME.sub(r"\1\2", module))
    if match and kind == "weight":
      target = match[1].replace(".", "/")
      is_conv = target.rpartition("/")[2].startswith("conv")
      out.update((layout.conv if is_conv else layout.batch_norm)(state, module, target))
  return out


def to_timm(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Flat Flax variables of `DenseNet` as timm's state dict: `convert`'s inverse."""
  return layout.to_torch(flat, lambda path: "classifier" if path == "head" else "features." + path.replace("/", "."))


registry.register(
  registry.Family(
    "densenet",
    priority=50,
    matches=matches,
    convert=convert,
    to_timm=to_timm,
    architectures={f"densenet{depth}": f"densenet{depth}" for depth in (121, 161, 169, 201)},
  )
)
