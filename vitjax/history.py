"""The run's metric history: a JSON-lines file in the workdir, and the plot of its curves."""

import json
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402 - the backend must be chosen first.


def read(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def append(path: str, record: dict[str, Any]) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def truncate(path: str, *, after_step: int) -> None:
  """Drops records newer than ``after_step``: after a resume they are about to be written again."""
  kept = [r for r in read(path) if r["step"] <= after_step]
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in kept)


def plot(records: list[dict[str, Any]], path: str, *, title: str = "") -> None:
  """Saves loss (train and eval) and accuracy (train and eval) against step as a two-panel PNG."""
  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
  for split, style in (("train", "-"), ("eval", "o-")):
    rows = [r for r in records if r["split"] == split]
    steps = [r["step"] for r in rows]
    if rows:
      loss_ax.plot(steps, [r["loss"] for r in rows], style, label=split, markersize=3)
      acc_ax.plot(steps, [r["accuracy"] for r in rows], style, label=split, markersize=3)
  for ax, name in ((loss_ax, "loss"), (acc_ax, "accuracy")):
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend()
  loss_ax.set_yscale("log")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
