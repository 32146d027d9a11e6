"""timm (and torchvision) state dicts in `.safetensors` files, mapped onto this project's models.

Each family's mapping lives in a module of its own with `matches(state)` and `convert(state)`; the first module of
`CONVERTERS` that recognises a file's key names converts it to flat Flax variables (`params/...`,
`batch_stats/...`). Pickled PyTorch files are never opened: they can run arbitrary code when loaded.
"""

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy

from vitjax.errors import ConfigError
from vitjax.preflight import refuse_pickle as refuse_pickle
from vitjax.transfer.timm import (
  alexnet,
  bit,
  coatnet,
  convnext,
  densenet,
  efficientnet,
  layout,
  mixer,
  resnet,
  swin,
  vgg,
  vit,
)

# Tried in order: more specific layouts first.
CONVERTERS = (resnet, bit, alexnet, vgg, densenet, swin, mixer, coatnet, efficientnet, convnext, vit)


def is_safetensors(path: str) -> bool:
  return path.endswith(".safetensors")


def read(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(flat params under this project's names, other collections such as `batch_stats`, nested) of a file."""
  if not os.path.exists(path):
    raise ConfigError(f"No checkpoint at {path!r}.")
  try:
    state = safetensors.numpy.load_file(path)
  except Exception as e:  # safetensors raises its own SafetensorError (or OSError) on a damaged file.
    raise ConfigError(f"{path!r} is not a readable .safetensors file ({e}).") from e
  state = {key.removeprefix("module."): np.asarray(value, np.float32) for key, value in state.items()}
  flat = convert(state, path)
  params = {k.removeprefix("params/"): v for k, v in flat.items() if not k.startswith("batch_stats/")}
  stats = {k.removeprefix("batch_stats/"): v for k, v in flat.items() if k.startswith("batch_stats/")}
  return params, ({"batch_stats": _unflatten(stats)} if stats else {})


def convert(state: Mapping[str, np.ndarray], path: str = "<state dict>") -> dict[str, np.ndarray]:
  """Flat `params/...` and `batch_stats/...` variables of the first converter that recognises `state`."""
  for converter in CONVERTERS:
    if converter.matches(state):
      recording = layout.RecordingState(state)
      try:
        flat = converter.convert(recording)
      except KeyError as e:
        family = converter.__name__.rsplit(".", 1)[-1]
        message = f"{path!r} has no {e.args[0]!r}, which the {family} layout needs: a truncated file?"
        raise ConfigError(message) from None
      # Under their torch names, so that the importer reports them as in the checkpoint but not in the model.
      return {**flat, **{key: state[key] for key in recording.unread()}}
  sample = ", ".join(sorted(state)[:4])
  raise ConfigError(
    f"{path!r} is in no state-dict layout known here (keys: {sample}, ...); known families: "
    f"{', '.join(c.__name__.rsplit('.', 1)[-1] for c in CONVERTERS)}."
  )


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    *parents, leaf = key.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree
