"""The report's figures as base64 PNG, inline in report.html: drawn by ``vitjax.evaluate.plots`` where a plot of
the evaluation mode fits, here only for what is the workflow's own (its stages and candidates)."""

import base64
import io
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vitjax.evaluate import plots


def _png(fig: Figure) -> str:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=80)
  return base64.b64encode(buffer.getvalue()).decode()


def _saved_png(plot: Callable[..., None], *args: Any, **kwargs: Any) -> str:
  """`plot(*args, path, **kwargs)` of a plots function that writes a file, read back as base64 PNG."""
  with tempfile.TemporaryDirectory() as scratch:
    path = os.path.join(scratch, "figure.png")
    plot(*args, path, **kwargs)
    with open(path, "rb") as f:
      return base64.b64encode(f.read()).decode()


def _scatter(
  points: list[tuple[float, float, str]], *, xlabel: str, ylabel: str, title: str, colours: list[str] | None = None
) -> tuple[Figure, Any]:
  """A figure of labelled points (x, y, name), one colour each (default: all alike), and its axes."""
  fig = Figure(figsize=(5.5, 4))
  ax = fig.subplots()
  for i, (x, y, name) in enumerate(points):
    ax.scatter(x, y, color=colours[i] if colours else "C0")
    ax.annotate(name, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig, ax


def stages_png(rows: list[dict[str, Any]]) -> str:
  """Every stage's test accuracy against its latency per image (log scale): the trade-off the deployment makes."""
  points = [(r["latency_ms"], r["test_accuracy"], r["stage"]) for r in rows if r.get("latency_ms")]
  fig, ax = _scatter(
    points, xlabel="latency per image (ms)", ylabel="test accuracy", title="stages: test accuracy against latency"
  )
  ax.set_xscale("log")
  return _png(fig)


def candidates_png(candidates: list[dict[str, Any]], front: list[str]) -> str:
  """The candidates' short runs: validation accuracy against training speed, the Pareto front in orange."""
  points = [(r["images_per_sec"], r["val_accuracy"], r["model"]) for r in candidates]
  colours = ["C1" if r["model"] in front else "C0" for r in candidates]
  fig, _ = _scatter(
    points,
    xlabel="training images/s",
    ylabel="validation accuracy",
    title="candidates (Pareto front in orange)",
    colours=colours,
  )
  return _png(fig)


def confused_png(
  pairs: list[dict[str, Any]],
  images: np.ndarray,
  labels: np.ndarray,
  predicted: np.ndarray,
  class_names: list[str],
  *,
  examples: int,
) -> str:
  """One row per confused pair (most frequent first): up to `examples` test images of that mistake."""
  index = {name: i for i, name in enumerate(class_names)}
  panels = []
  for pair in pairs:
    where = (labels == index[pair["true"]]) & (predicted == index[pair["predicted"]])
    shown = [("", images[i], None, False) for i in np.flatnonzero(where)[:examples]]
    shown[0] = (f"{pair['true']} as {pair['predicted']} ({pair['count']}x)", *shown[0][1:])
    panels += shown + [("", None, None, False)] * (examples - len(shown))
  return _saved_png(plots.plot_image_grid, panels, title="most-confused pairs (true as predicted)", columns=examples)


def figures(report: dict[str, Any], test: dict[str, Any], bins: tuple, confused: str | None, select: dict) -> dict:
  """The report's figures by caption: stages, confusion matrix, confused pairs, reliability, candidates."""
  confusion = np.array(report["confusion_matrix"]["matrix"])
  title = f"after (T={report['calibration']['temperature']:.3g})"
  found = {
    "stages: test accuracy against latency per image": stages_png(report["rows"]),
    "confusion matrix (deployed, test)": _png(
      plots.confusion_matrix_figure(confusion, test["class_names"], title="deployed model, test split")
    ),
  }
  if confused:
    found["most-confused pairs with test images (deployed)"] = confused
  found["reliability before temperature scaling"] = _saved_png(plots.plot_reliability_diagram, bins[0], title="before")
  found["reliability after temperature scaling"] = _saved_png(plots.plot_reliability_diagram, bins[1], title=title)
  started = [r for r in select["candidates"] if r["workdir"]]
  found["candidates: accuracy against speed"] = candidates_png(started, select["pareto"])
  return found
