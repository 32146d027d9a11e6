"""Input pipelines: TFDS and folder sources, preprocessing ops, batch mixing, per-process sharding.

Knows nothing about models. ``from_config(config.data)`` checks a data config and gives its source; the other
functions take that source.
"""

import importlib
from typing import Any

# Where each public name lives. The package loads TensorFlow, so its modules are imported on first use: a config
# file (which imports vitjax.configs) loads in well under a second and a config mistake is reported before that.
_HOMES = {
  **dict.fromkeys(["EMBEDDED", "FOLDERS", "builder_by_name", "from_config", "target_from_config"], "catalog"),
  "pixel_affine": "photometric",
  **dict.fromkeys(
    ["as_numpy", "class_names", "eval_batches", "eval_dataset", "num_classes", "num_examples", "prepare"], "pipeline"
  ),
  **dict.fromkeys(["target_config", "train_dataset", "with_target"], "pipeline"),
  **dict.fromkeys(["at_seq_len", "default_seq_len"], "seqlens"),
  **dict.fromkeys(["DatasetUnavailableError", "InputPipelineError", "Source", "UnreadableImageError"], "source"),
}


def __getattr__(name: str) -> Any:
  if name not in _HOMES:
    raise AttributeError(f"module 'vitjax.data' has no attribute {name!r}")
  value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
  globals()[name] = value
  return value


__all__ = [
  "EMBEDDED",
  "FOLDERS",
  "DatasetUnavailableError",
  "InputPipelineError",
  "Source",
  "UnreadableImageError",
  "as_numpy",
  "at_seq_len",
  "builder_by_name",
  "class_names",
  "default_seq_len",
  "eval_batches",
  "eval_dataset",
  "from_config",
  "num_classes",
  "num_examples",
  "pixel_affine",
  "prepare",
  "target_config",
  "target_from_config",
  "train_dataset",
  "with_target",
]
