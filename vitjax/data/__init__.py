"""Input pipelines: TFDS sources, preprocessing ops, per-process sharding. Knows nothing about models."""

from vitjax.data.pipeline import (DatasetUnavailableError, EMBEDDED, as_numpy, eval_batches, eval_dataset,
                                  builder_by_name, get_builder, num_classes, num_examples, prepare,
                                  train_dataset)
