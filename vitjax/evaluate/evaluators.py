"""Evaluators on frozen pre-logits features, cheap enough to run during training: few-shot linear probes, k-NN.

The few-shot probe is big_vision's: for k shots, k examples of every class are whitened, given a large constant
bias feature, and fitted in closed form by ridge regression onto one-hot targets in {-1, 1}; the score is the
accuracy of the argmax on the test features. k-NN votes among the k nearest training features by cosine similarity.
"""

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from vitjax.errors import ConfigError

# big_vision's bias feature: large, so that its weight is all but unregularised.
BIAS_CONSTANT = 100.0
Batch = dict[str, np.ndarray]


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
  `place_batch` puts one on the devices (the loop's `parallel.place_batch`); every process gets all examples.
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


def select_shots(labels: np.ndarray, shots: int, *, seed: int = 0) -> np.ndarray:
  """Indices of `shots` examples of every class in `labels`, chosen by a seeded shuffle."""
  order = np.random.default_rng(seed).permutation(len(labels))
  chosen = []
  for c in np.unique(labels):
    of_class = order[labels[order] == c][:shots]
    if len(of_class) < shots:
      raise ConfigError(f"Class {c} has {len(of_class)} examples, fewer than {shots} shots.")
    chosen.append(of_class)
  return np.sort(np.concatenate(chosen))


def ridge_features(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """Features as the probe sees them: whitened with the shots' statistics, plus the constant bias feature."""
  x = (x - mean) / std
  return np.concatenate([x, np.full((len(x), 1), BIAS_CONSTANT)], axis=1)


def fit_ridge(x: np.ndarray, targets: np.ndarray, l2_reg: float) -> np.ndarray:
  """Weights W minimising |x W - targets|^2 + l2_reg |W|^2, through the smaller of the two Gram matrices."""
  n, d = x.shape
  if n >= d:
    return np.linalg.solve(x.T @ x + l2_reg * np.eye(d), x.T @ targets)
  return x.T @ np.linalg.solve(x @ x.T + l2_reg * np.eye(n), targets)


def fewshot_accuracy(
  train_x: np.ndarray,
  train_y: np.ndarray,
  test_x: np.ndarray,
  test_y: np.ndarray,
  *,
  shots: int,
  l2_reg: float = 2.0**10,
  seed: int = 0,
) -> float:
  """Test accuracy of a ridge-regression probe fitted on `shots` training examples per class."""
  chosen = select_shots(train_y, shots, seed=seed)
  x, y = train_x[chosen].astype(np.float64), train_y[chosen]
  mean, std = x.mean(axis=0), x.std(axis=0) + 1e-5
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  targets = 2.0 * np.eye(num_classes)[y] - 1.0
  weights = fit_ridge(ridge_features(x, mean, std), targets, l2_reg)
  predictions = np.argmax(ridge_features(test_x.astype(np.float64), mean, std) @ weights, axis=1)
  return float(np.mean(predictions == test_y))


def knn_accuracy(
  train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *, k: int = 20, chunk: int = 1024
) -> float:
  """Test accuracy of a majority vote among the `k` most cosine-similar training examples (ties: lower class)."""
  normalize = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
  train_x, test_x = normalize(train_x.astype(np.float32)), normalize(test_x.astype(np.float32))
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  k = min(k, len(train_x))
  correct = 0
  for start in range(0, len(test_x), chunk):
    similarity = test_x[start : start + chunk] @ train_x.T
    neighbours = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    votes = np.apply_along_axis(np.bincount, 1, train_y[neighbours], minlength=num_classes)
    correct += int(np.sum(np.argmax(votes, axis=1) == test_y[start : start + chunk]))
  return correct / len(test_x)


def feature_metrics(
  apply_fn: Callable,
  variables: Any,
  train_batches: Iterable[Batch],
  test_batches: Iterable[Batch],
  *,
  shots: Sequence[int] = (1, 5, 10, 25),
  knn_k: int = 20,
  l2_reg: float = 2.0**10,
  seed: int = 0,
  place_batch: Callable[[Batch], Any] | None = None,
) -> dict[str, float]:
  """`fewshot_{k}shot` accuracies and `knn_{knn_k}` accuracy of the model's pre-logits features.

  `train_batches` feed the probes and the neighbour set, `test_batches` score them (both with eval
  preprocessing). A shot count that some class cannot fill is skipped with a warning.
  """
  train_x, train_y = extract_features(apply_fn, variables, train_batches, place_batch=place_batch)
  test_x, test_y = extract_features(apply_fn, variables, test_batches, place_batch=place_batch)
  results = {}
  for k in shots:
    try:
      results[f"fewshot_{k}shot"] = fewshot_accuracy(
        train_x, train_y, test_x, test_y, shots=k, l2_reg=l2_reg, seed=seed
      )
    except ValueError as e:
      logging.warning("Skipping the %d-shot probe: %s", k, e)
  if knn_k:
    results[f"knn_{knn_k}"] = knn_accuracy(train_x, train_y, test_x, test_y, k=knn_k)
  return results
