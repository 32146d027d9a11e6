"""The `knn` evaluator: a majority vote among the k training examples whose pre-logits features are the most
cosine-similar to each scored example's (`knn_{k}`)."""

from typing import Any

import ml_collections
import numpy as np

from vitjax.errors import ConfigError
from vitjax.evaluate import features, registry


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


@registry.register("knn", options={**features.OPTIONS, "k": registry.Option(20, "neighbours that vote")})
class Knn(features.FeatureEvaluator):
  """`knn_{k}`: accuracy of the k-nearest-neighbour vote, the probe split as the neighbours."""

  def __init__(self, options: ml_collections.ConfigDict, setting: registry.Setting):
    if options.k < 1:
      raise ConfigError(f"k={options.k} must be at least 1.")
    super().__init__(options, setting)
    self.k = options.k

  def __call__(self, weights: registry.Weights) -> dict[str, Any]:
    (train_x, train_y), (test_x, test_y) = self.features(weights, "train"), self.features(weights, "test")
    return {f"knn_{self.k}": knn_accuracy(train_x, train_y, test_x, test_y, k=self.k)}
