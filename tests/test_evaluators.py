"""Few-shot ridge probes and k-NN on features: against scikit-learn, and as evaluators on a model's pre-logits."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import datasets, linear_model, neighbors

from configs import quickstart
from vitjax import data, losses, models, sharding
from vitjax.evaluate import features, fewshot, knn, registry


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
  chosen = fewshot.select_shots(labels, 4, seed=1)
  np.testing.assert_array_equal(np.bincount(labels[chosen]), [4, 4, 4])
  assert not np.array_equal(chosen, fewshot.select_shots(labels, 4, seed=2))
  with pytest.raises(ValueError, match="Class 0 has 5 examples, fewer than 6 shots"):
    fewshot.select_shots(labels, 6)


@pytest.mark.parametrize("shots", [1, 10, 25])
def test_fewshot_probe_is_ridge_regression(clusters, shots):
  train_x, train_y, test_x, test_y = clusters
  accuracy = fewshot.fewshot_accuracy(train_x, train_y, test_x, test_y, shots=shots, l2_reg=3.0, seed=0)
  # The same probe with scikit-learn on the same whitened features (+ bias feature) and {-1, 1} targets.
  chosen = fewshot.select_shots(train_y, shots, seed=0)
  mean, std = train_x[chosen].mean(0), train_x[chosen].std(0) + 1e-5
  ridge = linear_model.Ridge(alpha=3.0, fit_intercept=False, solver="cholesky").fit(
    fewshot.ridge_features(train_x[chosen], mean, std), 2.0 * np.eye(4)[train_y[chosen]] - 1.0
  )
  expected = np.mean(ridge.predict(fewshot.ridge_features(test_x, mean, std)).argmax(1) == test_y)
  assert accuracy == pytest.approx(expected)
  assert accuracy > 0.6  # Far above the 0.25 of chance on these clusters.


def test_ridge_primal_and_dual_agree():
  rng = np.random.default_rng(3)
  x, targets = rng.normal(size=(12, 30)), rng.normal(size=(12, 3))
  dual = fewshot.fit_ridge(x, targets, 0.5)  # n < d: through the 12 x 12 Gram matrix.
  primal = np.linalg.solve(x.T @ x + 0.5 * np.eye(30), x.T @ targets)
  np.testing.assert_allclose(dual, primal, atol=1e-8)


def test_knn_matches_scikit_learn(clusters):
  train_x, train_y, test_x, test_y = clusters
  for k in (1, 5, 20):
    reference = neighbors.KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    expected = np.mean(reference.fit(train_x, train_y).predict(test_x) == test_y)
    assert knn.knn_accuracy(train_x, train_y, test_x, test_y, k=k, chunk=64) == pytest.approx(expected)


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


def test_extracted_features_are_the_sown_pre_logits_of_the_real_examples():
  digits = datasets.load_digits()
  test = slice(1500, 1700)
  model = models.build(
    "vit_micro8", num_classes=10, num_layers=1, hidden_size=32, mlp_dim=64, num_heads=2, classifier="gap"
  )
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  place = lambda batch: sharding.to_global(batch, sharding.batch_sharding(sharding.make_mesh()))  # noqa: E731
  test_batches = _digit_batches(digits.images[test], digits.target[test], 64)
  extracted, labels = features.extract_features(model.apply, variables, test_batches, place_batch=place)
  assert extracted.shape == (200, 32)
  np.testing.assert_array_equal(labels, digits.target[test])
  _, state = model.apply(variables, test_batches[0]["image"], train=False, mutable=["intermediates"])
  np.testing.assert_allclose(extracted[:64], state["intermediates"]["pre_logits"][0], rtol=1e-5, atol=1e-6)


def test_feature_evaluators_share_the_features_of_one_evaluation(digits_dir):
  config = quickstart.get_config()
  config.data.data_dir, config.eval_batch_size = digits_dir, 64
  config.evals.fewshot = registry.config("fewshot", shots=(1, 5, 200))
  config.evals.knn = registry.config("knn", k=10)
  source = data.from_config(config.data)
  model = models.build(
    "vit_micro8", num_classes=10, num_layers=1, hidden_size=32, mlp_dim=64, num_heads=2, classifier="gap"
  )
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  setting = registry.Setting(config, model, source, None, losses.softmax_cross_entropy, sharding.make_mesh(), [])
  evals = {entry.name: entry.evaluator for entry in registry.from_config(config, setting)}
  weights = registry.Weights(members=(variables,))
  probes, neighbours = evals["fewshot"](weights), evals["knn"](weights)
  assert set(probes) == {"fewshot_1shot", "fewshot_5shot"}  # No class has 200 of the 1,437 training digits.
  assert len(weights.cache) == 2  # The training and the test split's features, read once for both evaluators.

  def split_features(split):
    ds = data.eval_dataset(source, config.data, split=split, batch_size=64)
    return features.extract_features(model.apply, variables, data.as_numpy(ds))

  (train_x, train_y), (test_x, test_y) = split_features("train"), split_features("test")
  assert len(test_y) == 360 and train_x.shape == (1437, 32)
  assert probes["fewshot_5shot"] == fewshot.fewshot_accuracy(train_x, train_y, test_x, test_y, shots=5)
  assert neighbours == {"knn_10": knn.knn_accuracy(train_x, train_y, test_x, test_y, k=10)}
  # An ensemble's members side by side: the same member twice gives the same neighbours.
  assert evals["knn"](registry.Weights(members=(variables, variables))) == neighbours


def test_probes_on_raw_digit_pixels_improve_with_shots():
  digits = datasets.load_digits()
  x, y = digits.images.reshape(-1, 64), digits.target
  accuracies = [fewshot.fewshot_accuracy(x[:1000], y[:1000], x[1000:], y[1000:], shots=k) for k in (1, 5, 25)]
  assert 0.5 < accuracies[0] < accuracies[1] < accuracies[2] and accuracies[2] > 0.8
  assert knn.knn_accuracy(x[:1000], y[:1000], x[1000:], y[1000:], k=5) > 0.9
