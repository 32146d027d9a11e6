"""timm's VGG state dict (`features.N`, `pre_logits.fc1/fc2`, `head.fc`) -> `vitjax.models.vgg`.

Torchvision's VGG files (`classifier.0/3/6` Linear layers) load too: their hidden layers are timm's ConvMlp
convolutions flattened, and are reshaped back as timm's own loader does.
"""

import re
from collections.abc import Mapping

import numpy as np

from vitjax.transfer.timm import layout, registry

_FEATURE = re.compile(r"(features\.(\d+))\.weight")


def matches(state: Mapping[str, np.ndarray]) -> bool:
  """True for timm's VGG keys, or torchvision's (a 3x3 first convolution and Linear layers at `classifier.0/3/6`)."""
  first = state.get("features.0.weight")
  if first is None or first.shape[2:] != (3, 3):
    return False
  return "pre_logits.fc1.weight" in state or ("classifier.0.weight" in state and "classifier.6.weight" in state)


def _torchvision_hidden(state: Mapping[str, np.ndarray], source: str, target: str, size: int) -> dict:
  """A torchvision classifier Linear (out, channels * size * size), reading a (c, h, w)-flattened map, as the
  size x size ConvMlp convolution it equals."""
  weight = state[f"{source}.weight"]
  kernel = layout.conv_kernel(weight.reshape(weight.shape[0], -1, size, size))
  return {f"params/{target}/kernel": kernel, f"params/{target}/bias": state[f"{source}.bias"]}


def convert(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The state dict as flat Flax variables of `VGG`: 4-D `features.N.weight` are convolutions, 1-D ones BatchNorm."""
  out: dict[str, np.ndarray] = {}
  for key in state:
    match = _FEATURE.fullmatch(key)
    if match:
      is_conv = state[key].ndim == 4
      out.update((layout.conv if is_conv else layout.batch_norm)(state, match[1], f"features_{match[2]}"))
  if "pre_logits.fc1.weight" in state:
    out.update(layout.conv(state, "pre_logits.fc1", "conv_mlp/fc1"))
    out.update(layout.conv(state, "pre_logits.fc2", "conv_mlp/fc2"))
    out.update(layout.dense(state, "head.fc", "head"))
  else:
    out.update(_torchvision_hidden(state, "classifier.0", "conv_mlp/fc1", 7))
    out.update(_torchvision_hidden(state, "classifier.3", "conv_mlp/fc2", 1))
    out.update(layout.dense(state, "classifier.6", "head"))
  return out


def _torch_module(path: str) -> str:
  path = {"conv_mlp/fc1": "pre_logits.fc1", "conv_mlp/fc2": "pre_logits.fc2", "head": "head.fc"}.get(path, path)
  return re.sub(r"^features_(\d+)$", r"features.\1", path)


registry.register_renamed(
  "vgg",
  _torch_module,
  priority=40,
  matches=matches,
  convert=convert,
  architectures={f"vgg{d}{bn}": f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")},
)
