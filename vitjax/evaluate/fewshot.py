"""The `fewshot` evaluator: ridge-regression probes on frozen pre-logits features, k examples per class.

The probe is big_vision's: for k shots, k examples of every class are whitened, given a large constant bias feature,
and fitted in closed form by ridge regression onto one-hot targets in {-1, 1}; the score (`fewshot_{k}shot`) is the
accuracy of the argmax on the scored split's features. A shot count that some class cannot fill is skipped with a
warning.
"""

from typing import Any

import ml_collections
import numpy as np
from absl import logging

from vitjax.errors import ConfigError
from vitjax.evaluate import features, registry

# big_vision's bias feature: large, so that its weight is all but unregularised.
BIAS_CONSTANT = 100.0


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


@registry.register(
  "fewshot",
  options={
    **features.OPTIONS,
    "shots": registry.Option((1, 5, 10, 25), "examples per class of each probe (one metric each)"),
    "l2_reg": registry.Option(2.0**10, "the ridge penalty"),
  },
)
class FewShot(features.FeatureEvaluator):
  """`fewshot_{k}shot`: accuracy of the ridge probe fitted on k examples per class of the probe split."""

  def __init__(self, options: ml_collections.ConfigDict, setting: registry.Setting):
    if not options.shots or min(options.shots) < 1:
      raise ConfigError(f"shots={tuple(options.shots)} must be positive numbers of examples per class.")
    super().__init__(options, setting)
    self.shots, self.l2_reg = tuple(options.shots), options.l2_reg

  def __call__(self, weights: registry.Weights) -> dict[str, Any]:
    (train_x, train_y), (test_x, test_y) = self.features(weights, "train"), self.features(weights, "test")
    results = {}
    for k in self.shots:
      try:
        results[f"fewshot_{k}shot"] = fewshot_accuracy(
          train_x, train_y, test_x, test_y, shots=k, l2_reg=self.l2_reg, seed=self.seed
        )
      except ValueError as e:
        logging.warning("Skipping the %d-shot probe: %s", k, e)
    return results
