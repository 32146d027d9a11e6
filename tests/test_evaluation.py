"""``--mode=eval``: metrics and files from checkpoints of this project, ensembles, public files and test-time views."""

import functools
import json
import os
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import datasets

from configs import quickstart
from vitjax import checkpoints, losses, models
from vitjax.data import digits
from vitjax.evaluate import metrics, registry
from vitjax.evaluate import report as evaluation
from vitjax.train.state import TrainState

ARCH = dict(num_layers=1, hidden_size=32, mlp_dim=64, num_heads=2)


def _config(digits_dir, **eval_options):
  config = quickstart.get_config()
  config.data.data_dir = digits_dir
  config.model.update(ARCH)
  config.eval_batch_size = 64  # 360 test examples: the last batch is padded.
  config.eval.update(eval_options)
  return config


def _model():
  config = _config(None)
  return models.from_config(config.model, num_classes=10)


def _random_params(seed):
  """Initial parameters plus noise, so that the (zero-initialised) head gives varied predictions."""
  params = jax.jit(functools.partial(_model().init, train=False))(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: np.asarray(x) + 0.2 * rng.normal(size=x.shape).astype(np.float32), params["params"])


def _save_run(workdir, params, *, step, config):
  """A run as the training loop leaves it: the full train state with its meta record, its config, class names."""
  manager = checkpoints.create_manager(workdir)
  state = TrainState.create(apply_fn=None, params=params, tx=optax.adam(1e-3))
  checkpoints.save(manager, state, step=step, meta={"step": step, "train_seconds": 12.0})
  manager.wait_until_finished()
  checkpoints.write_run_info(workdir, config, [str(d) for d in range(10)])


def _test_images_and_labels():
  """The digits test split preprocessed as quickstart's pp_eval, computed here without the data pipeline."""
  raw = datasets.load_digits()
  index = digits.split_indices()["test"]
  images = np.round(raw.images[index] * (255.0 / 16.0)).astype(np.uint8)
  images = np.kron(images, np.ones((4, 4), np.uint8))[..., None].repeat(3, axis=-1)
  return images.astype(np.float32) / 127.5 - 1.0, raw.target[index]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_dir):
  root = tmp_path_factory.mktemp("runs")
  out = {}
  for name, seed in (("a", 0), ("b", 1)):
    params = _random_params(seed)
    _save_run(str(root / name), params, step=7, config=_config(digits_dir))
    out[name] = (str(root / name), params)
  return out


def test_eval_of_a_run_writes_every_metric_and_plot(digits_dir, runs):
  workdir, params = runs["a"]
  results = evaluation.evaluate_checkpoint(_config(digits_dir), workdir)
  images, labels = _test_images_and_labels()
  logits = np.asarray(_model().apply({"params": params}, images, train=False))
  assert results["num_examples"] == 360 and results["step"] == 7 and results["train_seconds"] == 12.0
  assert results["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))
  assert results["loss"] == pytest.approx(
    float(np.mean(losses.softmax_cross_entropy(logits, np.eye(10)[labels]))), rel=1e-4
  )
  assert results["ece"] == pytest.approx(metrics.calibration(metrics.softmax(logits), labels)["ece"], abs=1e-5)
  assert results["auc_ovr_macro"] == pytest.approx(
    metrics.roc_auc_one_vs_rest(metrics.softmax(logits), labels), abs=1e-5
  )

  with open(os.path.join(workdir, "eval_test.json")) as f:
    saved = json.load(f)
  for key in (
    "accuracy",
    "top5_accuracy",
    "macro_f1",
    "weighted_f1",
    "macro_precision",
    "weighted_recall",
    "auc_ovr_macro",
    "ece",
    "loss",
    "members",
  ):
    assert key in saved
  assert saved["accuracy"] == results["accuracy"]
  assert list(saved["per_class"]) == [str(d) for d in range(10)]
  assert sum(c["support"] for c in saved["per_class"].values()) == 360
  with open(os.path.join(workdir, "confusion_test.json")) as f:
    confusion = json.load(f)
  assert confusion["class_names"] == [str(d) for d in range(10)]
  np.testing.assert_array_equal(confusion["matrix"], metrics.confusion_matrix(labels, logits.argmax(1), 10))
  for plot in ("confusion_test.png", "reliability_test.png"):
    assert os.path.getsize(os.path.join(workdir, plot)) > 10_000


def test_eval_reads_the_model_from_the_run_and_runs_every_listed_evaluator(digits_dir, runs, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(runs["a"][0], workdir)
  config = _config(digits_dir)
  config.model.update(num_layers=2, hidden_size=48)  # Not the run's model: the run's own config describes it.
  config.evals.knn = registry.config("knn", k=5)
  config.evals.train = registry.config("classification", split="train[:100]", prefix="train_")
  results = evaluation.evaluate_checkpoint(config, workdir)
  images, labels = _test_images_and_labels()
  logits = np.asarray(_model().apply({"params": runs["a"][1]}, images, train=False))
  assert results["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))
  assert 0 <= results["knn_5"] <= 1 and results["train_num_examples"] == 100 and "train_per_class" not in results
  with open(os.path.join(workdir, "eval_test.json")) as f:
    assert json.load(f)["knn_5"] == results["knn_5"]
  with open(os.path.join(workdir, "eval_train_train_100.json")) as f:
    train_report = json.load(f)
  assert train_report["split"] == "train[:100]" and train_report["accuracy"] == results["train_accuracy"]
  assert os.path.exists(os.path.join(workdir, "confusion_train_train_100.png"))


def test_ensemble_averages_logits_and_public_files_evaluate_too(digits_dir, runs, tmp_path):
  (dir_a, params_a), (_, params_b) = runs["a"], runs["b"]
  npz = str(tmp_path / "b.npz")
  np.savez(npz, **{k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params_b, sep="/").items()})
  config = _config(digits_dir, checkpoints=(dir_a, npz))
  results = evaluation.evaluate_checkpoint(config, str(tmp_path))
  images, labels = _test_images_and_labels()
  logits = [np.asarray(_model().apply({"params": p}, images, train=False)) for p in (params_a, params_b)]
  ensemble = (logits[0] + logits[1]) / 2
  assert results["accuracy"] == pytest.approx(np.mean(ensemble.argmax(1) == labels))
  assert [m["checkpoint"] for m in results["members"]] == [dir_a, npz]
  assert [m["step"] for m in results["members"]] == [7, None]
  assert os.path.exists(tmp_path / "eval_test.json")


def test_tta_views_and_logit_averaging():
  images = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 6, 1)
  views = evaluation.tta_views(images, mode="ten_crop", crop_size=4)
  assert len(views) == 10 and all(v.shape == (2, 4, 4, 1) for v in views)
  np.testing.assert_array_equal(views[0], images[:, :4, :4])  # Top left.
  np.testing.assert_array_equal(views[3], images[:, 2:, 2:])  # Bottom right.
  np.testing.assert_array_equal(views[4], images[:, 1:5, 1:5])  # Center.
  np.testing.assert_array_equal(views[9], images[:, 1:5, 1:5][:, :, ::-1])  # Mirrored center.
  assert len(evaluation.tta_views(images, mode="five_crop", crop_size=4)) == 5
  with pytest.raises(ValueError, match="needs 0 < config.eval.crop_size <= the eval image size 6x6"):
    evaluation.tta_views(images, mode="five_crop", crop_size=8)

  model = _model()
  variables = {"params": _random_params(0)}
  batch = jax.random.uniform(jax.random.key(0), (3, 32, 32, 3), minval=-1, maxval=1)
  flip = evaluation.make_logits_fn(model, tta="flip")(variables, batch)
  expected = (model.apply(variables, batch, train=False) + model.apply(variables, batch[:, :, ::-1], train=False)) / 2
  np.testing.assert_allclose(flip, expected, rtol=1e-5, atol=1e-6)


def test_bad_eval_options_fail_before_reading_data(digits_dir, tmp_path):
  with pytest.raises(ValueError, match="Unknown config.eval.tta='rotate'"):
    evaluation.evaluate_checkpoint(_config(digits_dir, tta="rotate"), str(tmp_path))
  with pytest.raises(ValueError, match="needs config.eval.crop_size"):
    evaluation.evaluate_checkpoint(_config(digits_dir, tta="ten_crop"), str(tmp_path))
  with pytest.raises(ValueError, match="No checkpoint at .*missing"):
    evaluation.evaluate_checkpoint(_config(digits_dir, checkpoints=(str(tmp_path / "missing"),)), str(tmp_path))
  with pytest.raises(ValueError, match="No checkpoint in .*train first with --mode=train"):
    evaluation.evaluate_checkpoint(_config(digits_dir), str(tmp_path))


def test_multilabel_metrics_of_the_report():
  rng = np.random.default_rng(0)
  targets = (rng.random((50, 4)) < 0.4).astype(np.float32)
  targets[0] = 1
  logits = 3 * (targets - 0.5) + rng.normal(size=(50, 4))
  results = evaluation.compute_metrics(
    logits, targets, multilabel=True, loss_fn=losses.sigmoid_cross_entropy, threshold=0.5
  )
  top = logits.argmax(1)
  assert results["accuracy"] == results["precision_at_1"] == pytest.approx(np.mean(targets[np.arange(50), top]))
  assert results["mAP"] == pytest.approx(metrics.multilabel_metrics(metrics.sigmoid(logits), targets)["mAP"])
  assert results["loss"] == pytest.approx(float(np.mean(losses.sigmoid_cross_entropy(logits, targets))), rel=1e-5)
  assert "confusion_matrix" not in results
