"""Pre-logits features for the evaluators that probe them (fewshot.py, knn.py): extracted on the devices, gathered
on every host, and shared by the evaluators of one evaluation."""

import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from vitjax import data
from vitjax.errors import ConfigError
from vitjax.evaluate import registry

Batch = dict[str, np.ndarray]
# The options of every feature evaluator.
OPTIONS = {
  "dataset": registry.Option("source", "source (config.data) or target (config.data.target and its target_* keys)"),
  "train_split": registry.Option(None, "the split the probe fits on (None: the dataset's train split)", str),
  "split": registry.Option(None, "the split the probe is scored on (None: the dataset's eval split)", str),
}


@functools.partial(jax.jit, static_argnames="apply_fn")
def _pre_logits(apply_fn: Callable, variables: Any, images: jax.Array) -> jax.Array:
  """The `pre_logits` the model sows, for images with any leading axes (pmap's device axis is flattened)."""
  _, state = apply_fn(variables, images.reshape(-1, *images.shape[-3:]), train=False, mutable=["intermediates"])
  return state["intermediates"]["pre_logits"][0]


def extract_features(
  apply_fn: Callable, variables: Any, batches: Iterable[Batch], *, place_batch: Callable[[Batch], Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """(features (N, D), integer labels (N,)) on the host for every real (`mask` 1) example of `batches`.

  `batches` are host batches with `image`, one-hot `labels` and `mask` (as `data.eval_dataset` gives);
  `place_batch` puts one on the devices; every process gets all examples.
  """
  features, labels = [], []
  for batch in batches:
    images = place_batch({"image": batch["image"]})["image"] if place_batch else batch["image"]
    batch_features = multihost_utils.process_allgather(_pre_logits(apply_fn, variables, images), tiled=True)
    batch_labels, mask = (multihost_utils.process_allgather(batch[k], tiled=True) for k in ("labels", "mask"))
    keep = np.asarray(mask).reshape(-1) > 0
    features.append(np.asarray(batch_features, np.float32)[keep])
    labels.append(np.argmax(np.asarray(batch_labels).reshape(keep.shape[0], -1), axis=-1)[keep])
  return np.concatenate(features), np.concatenate(labels)


class FeatureEvaluator(registry.Evaluator):
  """Reads the features of a probe split and a scored split; subclasses say what they measure on them."""

  def __init__(self, options: ml_collections.ConfigDict, setting: registry.Setting):
    if options.dataset not in registry.SOURCES:
      raise ConfigError(f"Unknown dataset={options.dataset!r}; choose one of: {', '.join(registry.SOURCES)}.")
    train_split, split = setting.splits(options.dataset)
    self.setting, self.seed = setting, setting.config.seed
    self.splits = {
      "train": (options.dataset, options.train_split or train_split),
      "test": (options.dataset, options.split or split),
    }
    self.datasets = {part: setting.dataset(*key) for part, key in self.splits.items()}

  def features(self, weights: registry.Weights, part: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of `part` ("train" or "test"): an ensemble's members side by side along the feature axis;
    read once per `weights`, whichever evaluator asks first."""

    def compute():
      parts = [
        extract_features(
          self.setting.model.apply, variables, data.as_numpy(self.datasets[part]), place_batch=self.setting.place_batch
        )
        for variables in weights.members
      ]
      return np.concatenate([x for x, _ in parts], axis=1), parts[0][1]

    return weights.cached(("features", *self.splits[part]), compute)
