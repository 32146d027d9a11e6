"""Input pipelines: TFDS and folder sources, preprocessing ops, batch mixing, per-process sharding.

Knows nothing about models.
"""

from vitjax.data.pipeline import (
  EMBEDDED,
  FOLDERS,
  DatasetUnavailableError,
  Source,
  UnreadableImageError,
  as_numpy,
  builder_by_name,
  class_names,
  eval_batches,
  eval_dataset,
  get_builder,
  num_classes,
  num_examples,
  prepare,
  train_dataset,
)

__all__ = [
  "EMBEDDED",
  "FOLDERS",
  "DatasetUnavailableError",
  "Source",
  "UnreadableImageError",
  "as_numpy",
  "builder_by_name",
  "class_names",
  "eval_batches",
  "eval_dataset",
  "get_builder",
  "num_classes",
  "num_examples",
  "prepare",
  "train_dataset",
]
