"""torchvision's AlexNet state dict (`features.{0,3,6,8,10}`, `classifier.{1,4,6}`) -> `vitjax.models.alexnet`."""

from collections.abc import Mapping

import numpy as np

from vitjax.transfer.timm import layout, registry

_CONVS = ("features.0", "features.3", "features.6", "features.8", "features.10")
_POOLED = 6  # Side of the adaptive pool's output that `classifier.1` reads flattened.


def matches(state: Mapping[str, np.ndarray]) -> bool:
  """True for torchvision's AlexNet keys: an 11x11 first convolution and Linear layers at `classifier.1/4/6`."""
  first = state.get("features.0.weight")
  return first is not None and first.shape[2:] == (11, 11) and "classifier.1.weight" in state


def flatten_kernel(weight: np.ndarray) -> np.ndarray:
  """`classifier.1.weight` (out, c * 6 * 6), reading the map flattened as (c, h, w), as a Dense kernel reading it as
  (h, w, c), which is how the NHWC model flattens it."""
  out = weight.shape[0]
  channels = weight.shape[1] // (_POOLED * _POOLED)
  kernel = weight.reshape(out, channels, _POOLED, _POOLED).transpose(2, 3, 1, 0)
  return kernel.reshape(_POOLED * _POOLED * channels, out)


def convert(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The state dict as flat Flax variables of `AlexNet`."""
  out: dict[str, np.ndarray] = {}
  for source in _CONVS:
    out.update(layout.conv(state, source, source.replace(".", "_")))
  out["params/classifier_1/kernel"] = flatten_kernel(state["classifier.1.weight"])
  out["params/classifier_1/bias"] = state["classifier.1.bias"]
  out.update(layout.dense(state, "classifier.4", "classifier_4"))
  out.update(layout.dense(state, "classifier.6", "head"))
  return out


def to_timm(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Flat Flax variables of `AlexNet` as torchvision's state dict: `convert`'s inverse."""
  out = layout.to_torch(
    flat, lambda path: None if path == "classifier_1" else path.replace("_", ".").replace("head", "classifier.6")
  )
  kernel = np.asarray(flat["params/classifier_1/kernel"], np.float32)
  channels = kernel.shape[0] // (_POOLED * _POOLED)
  weight = kernel.reshape(_POOLED, _POOLED, channels, -1).transpose(3, 2, 0, 1)
  out["classifier.1.weight"] = np.ascontiguousarray(weight.reshape(weight.shape[0], -1))
  out["classifier.1.bias"] = np.asarray(flat["params/classifier_1/bias"], np.float32)
  return out


# torchvision's AlexNet has no timm architecture: its files load by their keys, and nothing is published as it.
registry.register(registry.Family("alexnet", priority=30, matches=matches, convert=convert, to_timm=to_timm))
