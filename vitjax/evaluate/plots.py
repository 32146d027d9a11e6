"""Every plot of the project: training curves, confusion matrices and reliability diagrams, saved as PNG.

Figures are built with matplotlib's object API (`Figure`), never pyplot, so nothing here selects a backend or
keeps global figure state: importing this module changes nothing in the process.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def _save(fig: Figure, path: str) -> None:
  fig.savefig(path, dpi=100)


def plot_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], path: str, *, title: str = "") -> None:
  """Heatmap of row-normalised counts (each true class sums to 1), class names on both axes, counts in cells
  when there are few enough classes to read them."""
  _save(confusion_matrix_figure(confusion, class_names, title=title), path)


def confusion_matrix_figure(confusion: np.ndarray, class_names: Sequence[str], *, title: str = "") -> Figure:
  """The heatmap of `plot_confusion_matrix`. Predicted-class labels stand upright unless they are short and few,
  so that neighbours never overlap."""
  num_classes = len(class_names)
  totals = confusion.sum(axis=1, keepdims=True)
  rates = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
  size = min(max(6.0, 0.35 * num_classes), 40.0)
  fig = Figure(figsize=(size + 1.5, size + 0.1 * max(map(len, class_names))))
  ax = fig.subplots()
  image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
  upright = max(map(len, class_names)) > 3 or num_classes > 10  # Short names fit side by side; others stand up.
  ax.set_xticks(range(num_classes), class_names, rotation=90 if upright else 0)
  ax.set_yticks(range(num_classes), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if num_classes <= 30:
    for (i, j), count in np.ndenumerate(confusion):
      ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color="white" if rates[i, j] > 0.5 else "black")
  ax.set_title(title)
  fig.tight_layout()
  return fig


def plot_reliability_diagram(bins: dict[str, Any], path: str, *, title: str = "") -> None:
  """Accuracy against confidence per bin (bars), the diagonal of perfect calibration, and the ECE."""
  edges = bins["bin_edges"]
  centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
  filled = bins["bin_counts"] > 0
  fig = Figure(figsize=(5, 5))
  ax = fig.subplots()
  accuracy, confidence = bins["bin_accuracy"][filled], bins["bin_confidence"][filled]
  ax.bar(centers[filled], accuracy, width=width, edgecolor="black", label="accuracy")
  ax.bar(
    centers[filled],
    np.abs(confidence - accuracy),
    bottom=np.minimum(accuracy, confidence),
    width=width,
    facecolor="none",
    edgecolor="red",
    hatch="//",
    label="gap to mean confidence",
  )
  ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("confidence")
  ax.set_ylabel("accuracy")
  ax.legend(loc="upper left")
  ax.set_title(f"{title} ECE {100 * bins['ece']:.2f}%".strip())
  fig.tight_layout()
  _save(fig, path)


def plot_curves(records: list[dict[str, Any]], path: str, *, title: str = "") -> None:
  """Saves loss (train and eval) and accuracy (train and eval) against step as a two-panel PNG."""
  fig = Figure(figsize=(11, 4))
  loss_ax, acc_ax = fig.subplots(1, 2)
  for split, style in (("train", "-"), ("eval", "o-")):
    # Eval records of steps where only some evaluators ran may lack the loss: the curves skip them.
    rows = [r for r in records if r["split"] == split and "loss" in r]
    steps = [r["step"] for r in rows]
    if rows:
      loss_ax.plot(steps, [r["loss"] for r in rows], style, label=split, markersize=3)
      # Self-supervised objectives log no train accuracy: their curve stays empty.
      acc_ax.plot(steps, [r.get("accuracy", float("nan")) for r in rows], style, label=split, markersize=3)
  for ax, name in ((loss_ax, "loss"), (acc_ax, "accuracy")):
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # A run stopped before its first record has no curve to name.
      ax.legend()
  loss_ax.set_yscale("log")
  fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path)


def plot_image_grid(
  panels: Sequence[tuple[str, np.ndarray | None, np.ndarray | None, bool]],
  path: str,
  *,
  title: str = "",
  columns: int = 5,
) -> None:
  """Titled images in rows of `columns`, each (title, image [H, W, C] uint8 or None, heat map [H, W] or None,
  signed): a heat map lies over a grey copy of its image, unsigned ones from zero to their maximum, signed ones on
  a blue-white-red scale symmetric around zero, so that colours compare within a panel."""
  rows = -(-len(panels) // columns)
  fig = Figure(figsize=(2.2 * min(columns, len(panels)), 2.7 * rows + 0.4))
  axes = np.asarray(fig.subplots(rows, min(columns, len(panels)), squeeze=False)).reshape(-1)
  for ax, (name, image, heat, signed) in zip(axes, panels):
    if image is not None:
      shown = image.mean(axis=-1) if heat is not None else image
      ax.imshow(shown.astype(np.uint8), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    if heat is not None:
      limit = float(np.max(np.abs(heat))) or 1.0
      scale = dict(cmap="bwr", vmin=-limit, vmax=limit) if signed else dict(cmap="inferno", vmin=0.0, vmax=limit)
      ax.imshow(heat, alpha=0.6 if image is not None else 1.0, interpolation="nearest", **scale)
    ax.set_title(name, fontsize=8)
  for ax in axes:
    ax.axis("off")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  _save(fig, path)
