"""Input pipelines: TFDS and folder sources, preprocessing ops, batch mixing, per-process sharding.

Knows nothing about models. ``from_config(config.data)`` checks a data config and gives its source; the other
functions take that source.
"""

# Importing the op modules registers their preprocessing ops, so that every spec can name them.
from vitjax.data import augment, decoding, geometric, photometric  # noqa: F401
from vitjax.data.catalog import EMBEDDED, FOLDERS, builder_by_name, from_config, target_from_config
from vitjax.data.photometric import pixel_affine
from vitjax.data.pipeline import (
  as_numpy,
  class_names,
  eval_batches,
  eval_dataset,
  num_classes,
  num_examples,
  prepare,
  target_config,
  train_dataset,
  with_target,
)
from vitjax.data.source import DatasetUnavailableError, Source, UnreadableImageError

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
