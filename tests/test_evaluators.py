"""Few-shot ridge probes and k-NN on features: against scikit-learn, and end to end on a model's pre-logits."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import datasets, linear_model, neighbors

from vitjax import models, sharding
from vitjax.evaluate import evaluators


@pytest.fixture(scope="module")
def clusters():
  """Four noisy Gaussian clusters in 16 dimensions: train and test features with integer labels."""
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(4, 16)) * 2.0
  train_y, test_y = rng.integers(0, 4, 400), rng.integers(0, 4, 200)
  train_x = centers[train_y] + rng.normal(size=(400, 16)) * 1.5
  test_x = centers[test_y] + rng.normal(size=(200, 16)) * 1.5
  return train_x, train_y, test_x, test_y


def test_select_shots_takes_k_per_class():
  labels = np.repeat(np.arange(3), [5, 7, 9])
  chosen = evaluators.select_shots(labels, 4, seed=1)
  np.testing.assert_array_equal(np.bincount(labels[chosen]), [4, 4, 4])
  assert not np.array_equal(chosen, evaluators.select_shots(labels, 4, seed=2))
  with pytest.raises(ValueError, match="Class 0 has 5 examples, fewer than 6 shots"):
    evaluators.select_shots(labels, 6)


@pytest.mark.parametrize("shots", [1, 10, 25])
def test_fewshot_probe_is_ridge_regression(clusters, shots):
  train_x, train_y, test_x, test_y = clusters
  accuracy = evaluators.fewshot_accuracy(train_x, train_y, test_x, test_y, shots=shots, l2_reg=3.0, seed=0)
  # The same probe with scikit-learn on the same whitened features (+ bias feature) and {-1, 1} targets.
  chosen = evaluators.select_shots(train_y, shots, seed=0)
  mean, std = train_x[chosen].mean(0), train_x[chosen].std(0) + 1e-5
  ridge = linear_model.Ridge(alpha=3.0, fit_intercept=False, solver="cholesky").fit(
    evaluators.ridge_features(train_x[chosen], mean, std), 2.0 * np.eye(4)[train_y[chosen]] - 1.0
  )
  expected = np.mean(ridge.predict(evaluators.ridge_features(test_x, mean, std)).argmax(1) == test_y)
  assert accuracy == pytest.approx(expected)
  assert accuracy > 0.6  # Far above the 0.25 of chance on these clusters.


def test_ridge_primal_and_dual_agree():
  rng = np.random.default_rng(3)
  x, targets = rng.normal(size=(12, 30)), rng.normal(size=(12, 3))
  dual = evaluators.fit_ridge(x, targets, 0.5)  # n < d: through the 12 x 12 Gram matrix.
  primal = np.linalg.solve(x.T @ x + 0.5 * np.eye(30), x.T @ targets)
  np.testing.assert_allclose(dual, primal, atol=1e-8)


def test_knn_matches_scikit_learn(clusters):
  train_x, train_y, test_x, test_y = clusters
  for k in (1, 5, 20):
    knn = neighbors.KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(train_x, train_y)
    expected = np.mean(knn.predict(test_x) == test_y)
    assert evaluators.knn_accuracy(train_x, train_y, test_x, test_y, k=k, chunk=64) == pytest.approx(expected)


def _digit_batches(images, labels, batch_size):
  """Host eval batches as the pipeline makes them: 32x32 RGB in [-1, 1], one-hot labels, padding masked out."""
  images = np.repeat(np.kron(images / 8.0 - 1.0, np.ones((4, 4)))[..., None], 3, axis=-1).astype(np.float32)
  pad = -len(images) % batch_size
  mask = np.r_[np.ones(len(images)), np.zeros(pad)].astype(np.float32)
  images = np.concatenate([images, np.full((pad, *images.shape[1:]), 7.0, np.float32)])
  onehot = np.concatenate([np.eye(10, dtype=np.float32)[labels], np.zeros((pad, 10), np.float32)])
  return [
    {"image": images[i : i + batch_size], "labels": onehot[i : i + batch_size], "mask": mask[i : i + batch_size]}
    for i in range(0, len(images), batch_size)
  ]


def test_feature_metrics_on_a_model(clusters):
  digits = datasets.load_digits()
  train, test = slice(0, 400), slice(1500, 1700)
  model = models.build(
    "vit_micro8", num_classes=10, num_layers=1, hidden_size=32, mlp_dim=64, num_heads=2, classifier="gap"
  )
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  place = lambda batch: sharding.to_global(batch, sharding.batch_sharding(sharding.make_mesh()))  # noqa: E731
  test_batches = _digit_batches(digits.images[test], digits.target[test], 64)
  features, labels = evaluators.extract_features(model.apply, variables, test_batches, place_batch=place)
  assert features.shape == (200, 32)
  np.testing.assert_array_equal(labels, digits.target[test])
  _, state = model.apply(variables, test_batches[0]["image"], train=False, mutable=["intermediates"])
  np.testing.assert_allclose(features[:64], state["intermediates"]["pre_logits"][0], rtol=1e-5, atol=1e-6)

  train_batches = _digit_batches(digits.images[train], digits.target[train], 64)
  results = evaluators.feature_metrics(
    model.apply, variables, train_batches, test_batches, shots=(1, 5, 60), knn_k=10, place_batch=place
  )
  assert set(results) == {"fewshot_1shot", "fewshot_5shot", "knn_10"}  # No class has 60 of 400 examples.
  train_features, train_labels = evaluators.extract_features(model.apply, variables, train_batches)
  assert results["fewshot_5shot"] == evaluators.fewshot_accuracy(
    train_features, train_labels, features, labels, shots=5
  )
  assert results["knn_10"] == evaluators.knn_accuracy(train_features, train_labels, features, labels, k=10)


def test_probes_on_raw_digit_pixels_improve_with_shots():
  digits = datasets.load_digits()
  x, y = digits.images.reshape(-1, 64), digits.target
  accuracies = [evaluators.fewshot_accuracy(x[:1000], y[:1000], x[1000:], y[1000:], shots=k) for k in (1, 5, 25)]
  assert 0.5 < accuracies[0] < accuracies[1] < accuracies[2] and accuracies[2] > 0.8
  assert evaluators.knn_accuracy(x[:1000], y[:1000], x[1000:], y[1000:], k=5) > 0.9
