"""timm (and torchvision) state dicts in `.safetensors` files, mapped onto this project's models.

Each family's mapping lives in a module of its own that registers a `registry.Family` on import (its `matches`,
`convert`, the inverse `to_timm`, and the timm architecture names it builds); every module of this package is
imported here, so a new family is one new file. The first family, by priority, that recognises a file's key names
converts it to flat Flax variables (`params/...`, `batch_stats/...`). Pickled PyTorch files are never opened: they
can run arbitrary code when loaded.
"""

import importlib
import os
import pkgutil
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy

from vitjax.errors import ConfigError
from vitjax.preflight import refuse_pickle
from vitjax.transfer.timm import layout, registry
from vitjax.transfer.timm.registry import architectures, for_architecture, for_model

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["architectures", "convert", "for_architecture", "for_model", "read", "refuse_pickle"]


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
  """Flat `params/...` and `batch_stats/...` variables of the first family that recognises `state`."""
  for family in registry.families():
    if family.matches(state):
      recording = layout.RecordingState(state)
      try:
        flat = family.convert(recording)
      except KeyError as e:
        message = f"{path!r} has no {e.args[0]!r}, which the {family.name} layout needs: a truncated file?"
        raise ConfigError(message) from None
      # Under their torch names, so that the importer reports them as in the checkpoint but not in the model.
      return {**flat, **{key: state[key] for key in recording.unread()}}
  sample = ", ".join(sorted(state)[:4])
  raise ConfigError(
    f"{path!r} is in no state-dict layout known here (keys: {sample}, ...); known families: "
    f"{', '.join(family.name for family in registry.families())}."
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
