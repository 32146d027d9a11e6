"""Classification metrics: numpy functions over logits collected on the host (accuracy, per-class scores, AUC,
calibration, mAP).

Functions take numpy arrays: `logits` or `probs` (N, C), integer `labels` (N,), or multi-hot `targets` (N, C).
The per-class and averaged definitions are scikit-learn's (zero where a ratio is 0/0), so reports agree with it.
"""

from typing import Any

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(shifted)
  return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-logits))


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of examples whose label is among the k highest logits; ties rank the lower class first, so k=1 is
  the accuracy of `argmax`."""
  return float(np.mean(_label_rank(logits, labels) < k))


def _label_rank(logits, labels):
  """0-based rank of each label's logit in its row, ties broken by class index."""
  label_logit = np.take_along_axis(logits, labels[:, None], axis=1)
  earlier = np.arange(logits.shape[1])[None, :] < labels[:, None]
  return np.sum((logits > label_logit) | ((logits == label_logit) & earlier), axis=1)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """(C, C) counts: row = true class, column = predicted class."""
  return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def most_confused(confusion: np.ndarray, k: int) -> list[tuple[int, int, int]]:
  """The `k` largest off-diagonal cells of a confusion matrix as (true, predicted, count), most frequent first: the
  mistakes worth looking at. Empty cells are left out; ties keep the row-major order."""
  mistakes = confusion * (1 - np.eye(len(confusion), dtype=confusion.dtype))
  order = np.argsort(-mistakes, axis=None, kind="stable")[:k]
  cells = [np.unravel_index(i, confusion.shape) for i in order]
  return [(int(t), int(p), int(mistakes[t, p])) for t, p in cells if mistakes[t, p] > 0]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  return np.divide(numerator, denominator, out=np.zeros(np.shape(numerator)), where=denominator > 0)


def precision_recall_f1(confusion: np.ndarray) -> dict[str, Any]:
  """Per-class precision, recall, F1 and support, with their macro (plain mean) and weighted (by support) means."""
  true_positives = np.diag(confusion).astype(np.float64)
  support = confusion.sum(axis=1)
  precision = _ratio(true_positives, confusion.sum(axis=0))
  recall = _ratio(true_positives, support)
  f1 = _ratio(2 * precision * recall, precision + recall)
  weights = support / max(support.sum(), 1)
  out = {"precision": precision, "recall": recall, "f1": f1, "support": support}
  for name in ("precision", "recall", "f1"):
    out[f"macro_{name}"] = float(np.mean(out[name]))
    out[f"weighted_{name}"] = float(np.sum(out[name] * weights))
  return out


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
  """Area under the ROC curve of a binary problem: the probability that a random positive outscores a random
  negative, ties counting half (the Mann-Whitney statistic). NaN without both classes."""
  positives = positives.astype(bool)
  num_pos, num_neg = positives.sum(), (~positives).sum()
  if num_pos == 0 or num_neg == 0:
    return float("nan")
  ranks = _average_ranks(scores)
  return float((ranks[positives].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks, tied values sharing the mean of their ranks."""
  order = np.argsort(values, kind="stable")
  sorted_values = values[order]
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  ends = np.r_[starts[1:], len(values)]
  ranks = np.empty(len(values))
  ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
  return ranks


def roc_auc_one_vs_rest(probs: np.ndarray, labels: np.ndarray) -> float:
  """Macro average over classes of each class's binary AUC against the rest; classes absent from `labels` skipped."""
  aucs = [roc_auc(probs[:, c], labels == c) for c in range(probs.shape[1])]
  aucs = [a for a in aucs if not np.isnan(a)]
  return float(np.mean(aucs)) if aucs else float("nan")


def calibration(probs: np.ndarray, labels: np.ndarray, *, num_bins: int = 15) -> dict[str, Any]:
  """Expected calibration error (Guo et al. 2017) over equal-width confidence bins (lo, hi], and the bins.

  ECE = sum over bins of |accuracy - mean confidence| weighted by the bin's share of examples.
  """
  confidence = probs.max(axis=1)
  correct = probs.argmax(axis=1) == labels
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  bins = np.searchsorted(edges[1:-1], confidence, side="left")
  counts = np.bincount(bins, minlength=num_bins)
  accuracy = _ratio(np.bincount(bins, weights=correct, minlength=num_bins), counts)
  mean_confidence = _ratio(np.bincount(bins, weights=confidence, minlength=num_bins), counts)
  ece = float(np.sum(np.abs(accuracy - mean_confidence) * counts) / max(len(labels), 1))
  return {
    "ece": ece,
    "bin_edges": edges,
    "bin_counts": counts,
    "bin_accuracy": accuracy,
    "bin_confidence": mean_confidence,
  }


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
  """Area under the precision-recall curve as scikit-learn's step sum, sum_n (R_n - R_{n-1}) P_n over the
  distinct score thresholds. NaN without positives."""
  positives = positives.astype(bool)
  if not positives.any():
    return float("nan")
  order = np.argsort(-scores, kind="stable")
  scores, positives = scores[order], positives[order]
  last_of_each_threshold = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), len(scores) - 1]
  true_positives = np.cumsum(positives)[last_of_each_threshold]
  precision = true_positives / (last_of_each_threshold + 1)
  recall = true_positives / positives.sum()
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def multilabel_metrics(probs: np.ndarray, targets: np.ndarray, *, threshold: float = 0.5) -> dict[str, Any]:
  """Mean average precision over labels that have positives, and per-label / macro F1 of `probs >= threshold`."""
  targets = targets.astype(bool)
  aps = np.array([average_precision(probs[:, c], targets[:, c]) for c in range(targets.shape[1])])
  predicted = probs >= threshold
  true_positives = np.sum(predicted & targets, axis=0)
  f1 = _ratio(2.0 * true_positives, predicted.sum(axis=0) + targets.sum(axis=0))
  return {
    "mAP": float(np.nanmean(aps)) if not np.all(np.isnan(aps)) else float("nan"),
    "average_precision": aps,
    "f1": f1,
    "macro_f1": float(np.mean(f1)),
    "threshold": threshold,
  }


def classification_metrics(logits: np.ndarray, labels: np.ndarray, *, num_bins: int = 15) -> dict[str, Any]:
  """Every single-label metric of the evaluation report, from logits (N, C) and integer labels (N,).

  Top-5 accuracy only with more than 5 classes (it is 1 otherwise); binary AUC with 2 classes, else one-vs-rest.
  """
  num_classes = logits.shape[1]
  probs = softmax(logits.astype(np.float64))
  confusion = confusion_matrix(labels, logits.argmax(axis=1), num_classes)
  scores = precision_recall_f1(confusion)
  out = {
    "accuracy": top_k_accuracy(logits, labels, 1),
    "confusion_matrix": confusion,
    **scores,
    "calibration": calibration(probs, labels, num_bins=num_bins),
  }
  if num_classes > 5:
    out["top5_accuracy"] = top_k_accuracy(logits, labels, 5)
  out["ece"] = out["calibration"]["ece"]
  if num_classes == 2:
    out["auc"] = roc_auc(probs[:, 1], labels == 1)
  else:
    out["auc_ovr_macro"] = roc_auc_one_vs_rest(probs, labels)
  return out
