"""Every metric against scikit-learn or a value worked out by hand, on the same predictions."""

import os

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from sklearn import metrics as skm

from vitjax.evaluate import metrics, plots


@pytest.fixture(scope="module")
def predictions():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 7, size=300)
  # Informative but imperfect logits, a few exact ties, and one class never predicted.
  logits = rng.normal(size=(300, 7)) + 2.0 * np.eye(7)[labels]
  logits[:, 6] -= 10.0
  logits[:5] = 0.0
  return logits, labels


def test_top_k_accuracy(predictions):
  logits, labels = predictions
  for k in (1, 3, 5):
    expected = skm.top_k_accuracy_score(labels[5:], logits[5:], k=k, labels=range(7))
    assert metrics.top_k_accuracy(logits[5:], labels[5:], k) == pytest.approx(expected)
  # By hand: ties rank the lower class first, as argmax does.
  assert metrics.top_k_accuracy(np.zeros((2, 3)), np.array([0, 2]), 1) == 0.5
  assert metrics.top_k_accuracy(np.zeros((2, 3)), np.array([0, 2]), 3) == 1.0
  assert metrics.top_k_accuracy(np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]), np.array([2, 1]), 2) == 0.5


def test_precision_recall_f1_and_confusion_matrix(predictions):
  logits, labels = predictions
  preds = logits.argmax(1)
  confusion = metrics.confusion_matrix(labels, preds, 7)
  np.testing.assert_array_equal(confusion, skm.confusion_matrix(labels, preds, labels=range(7)))
  scores = metrics.precision_recall_f1(confusion)
  p, r, f, s = skm.precision_recall_fscore_support(labels, preds, labels=range(7), zero_division=0)
  for name, expected in (("precision", p), ("recall", r), ("f1", f), ("support", s)):
    np.testing.assert_allclose(scores[name], expected)
  for average in ("macro", "weighted"):
    p, r, f, _ = skm.precision_recall_fscore_support(labels, preds, labels=range(7), average=average, zero_division=0)
    assert (scores[f"{average}_precision"], scores[f"{average}_recall"], scores[f"{average}_f1"]) == pytest.approx(
      (p, r, f)
    )
  assert scores["precision"][6] == 0.0  # Never predicted: 0/0 counts as 0.


def test_roc_auc_binary_and_one_vs_rest(predictions):
  logits, labels = predictions
  probs = metrics.softmax(logits)
  assert metrics.roc_auc_one_vs_rest(probs, labels) == pytest.approx(
    skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
  )
  binary = (labels > 3).astype(int)
  scores = np.round(logits[:, 4:].sum(1), 1)  # Rounded so that there are ties.
  assert metrics.roc_auc(scores, binary) == pytest.approx(skm.roc_auc_score(binary, scores))
  # By hand: of the 2 x 2 positive/negative pairs, 3 are ordered right and one is a tie.
  assert metrics.roc_auc(np.array([0.1, 0.4, 0.4, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(3.5 / 4)
  assert np.isnan(metrics.roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_expected_calibration_error_by_hand():
  # Confidences 0.9, 0.9 (one right) -> bin (0.8, 0.9]: |0.5 - 0.9|; 0.6 right -> bin (0.4, 0.6]: |1 - 0.6|.
  probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]])
  labels = np.array([0, 0, 0])
  result = metrics.calibration(probs, labels, num_bins=5)
  assert result["ece"] == pytest.approx((2 * 0.4 + 1 * 0.4) / 3)
  np.testing.assert_array_equal(result["bin_counts"], [0, 0, 1, 0, 2])
  np.testing.assert_allclose(result["bin_accuracy"], [0, 0, 1, 0, 0.5])
  # A confidence on a bin edge belongs to the bin it closes: 0.6 is in (0.4, 0.6], not (0.6, 0.8].
  assert metrics.calibration(np.array([[0.6, 0.4]]), np.array([1]), num_bins=5)["bin_counts"][2] == 1
  # Perfectly calibrated: in a bin of confidence 0.75, three of four right.
  probs = np.tile([[0.75, 0.25]], (4, 1))
  assert metrics.calibration(probs, np.array([0, 0, 0, 1]))["ece"] == pytest.approx(0.0)


def test_multilabel_map_and_f1():
  rng = np.random.default_rng(1)
  targets = rng.random((200, 5)) < 0.3
  targets[0] = True  # Every label has positives.
  probs = np.clip(0.4 * targets + rng.random((200, 5)) * 0.7, 0, 1)
  probs = np.round(probs, 2)  # Ties in the scores.
  result = metrics.multilabel_metrics(probs, targets, threshold=0.5)
  np.testing.assert_allclose(result["average_precision"], skm.average_precision_score(targets, probs, average=None))
  assert result["mAP"] == pytest.approx(skm.average_precision_score(targets, probs, average="macro"))
  np.testing.assert_allclose(result["f1"], skm.f1_score(targets, probs >= 0.5, average=None, zero_division=0))
  assert result["macro_f1"] == pytest.approx(skm.f1_score(targets, probs >= 0.5, average="macro", zero_division=0))
  # By hand: ranking positive, negative, positive gives AP = (1/2)(1) + (1/2)(2/3).
  assert metrics.average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1])) == pytest.approx(5 / 6)


def test_classification_metrics_bundle(predictions):
  logits, labels = predictions
  result = metrics.classification_metrics(logits, labels)
  assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))
  assert result["accuracy"] == pytest.approx(np.trace(result["confusion_matrix"]) / 300)
  assert result["top5_accuracy"] == pytest.approx(metrics.top_k_accuracy(logits, labels, 5))
  assert result["confusion_matrix"].sum() == 300 and "auc_ovr_macro" in result
  assert result["ece"] == result["calibration"]["ece"]
  binary = metrics.classification_metrics(logits[:, :2], (labels == 1).astype(int))
  assert binary["auc"] == pytest.approx(skm.roc_auc_score(labels == 1, metrics.softmax(logits[:, :2])[:, 1]))


def test_plots_are_written(predictions, tmp_path):
  logits, labels = predictions
  result = metrics.classification_metrics(logits, labels)
  plots.plot_confusion_matrix(result["confusion_matrix"], [f"class {i}" for i in range(7)], str(tmp_path / "c.png"))
  plots.plot_reliability_diagram(result["calibration"], str(tmp_path / "r.png"))
  assert os.path.getsize(tmp_path / "c.png") > 10_000 and os.path.getsize(tmp_path / "r.png") > 10_000


def test_long_class_names_on_the_confusion_matrix_do_not_overlap():
  names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
  confusion = np.diag(np.arange(1, 11))
  fig = plots.confusion_matrix_figure(confusion, names)
  renderer = FigureCanvasAgg(fig).get_renderer()
  boxes = [label.get_window_extent(renderer) for label in fig.axes[0].get_xticklabels()]
  assert len(boxes) == 10
  assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))
