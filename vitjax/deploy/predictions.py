"""Predictions for many image files as a CSV table: one row per file, unreadable files included with the reason."""

import csv
import dataclasses
from collections.abc import Sequence

import numpy as np
import tqdm

from vitjax.deploy.classifier import Classifier
from vitjax.errors import ConfigError

# Inputs shorter than this finish before a progress bar would tell anything.
PROGRESS_MIN_FILES = 64


@dataclasses.dataclass(frozen=True)
class Summary:
  """What a run over files did: how many files, how many got a prediction, how many could not be read."""

  files: int
  predicted: int
  unreadable: int

  def line(self, output: str) -> str:
    return f"{self.files} files: {self.predicted} predicted, {self.unreadable} unreadable; wrote {output}"


def columns(top_k: int) -> list[str]:
  """The CSV header: path, the top-1 label and probability, the top-k pairs, and the error (empty when read)."""
  ranked = [name for i in range(1, top_k + 1) for name in (f"top{i}_label", f"top{i}_probability")]
  return ["path", "label", "probability", *ranked, "error"]


def write_csv(classifier: Classifier, paths: Sequence[str], output: str, *, top_k: int = 5) -> Summary:
  """Classifies every file of `paths` and writes one row per file to the CSV file `output`, in input order."""
  if top_k < 1:
    raise ConfigError(f"top_k must be at least 1, got {top_k}.")
  top_k = min(top_k, len(classifier.class_names))
  predicted = 0
  disable = True if len(paths) < PROGRESS_MIN_FILES else None  # None: a bar on a terminal only.
  with open(output, "w", newline="") as f, tqdm.tqdm(total=len(paths), unit="img", disable=disable) as bar:
    writer = csv.writer(f)
    writer.writerow(columns(top_k))
    for prediction in classifier.iter_predictions(paths):
      path = paths[prediction.index]
      if prediction.output is None:
        writer.writerow([path, "", "", *[""] * (2 * top_k), prediction.error])
      else:
        ranked = np.argsort(-prediction.output, kind="stable")[:top_k]
        pairs = [(classifier.class_names[i], f"{prediction.output[i]:.6f}") for i in ranked]
        writer.writerow([path, *pairs[0], *(value for pair in pairs for value in pair), ""])
        predicted += 1
      bar.update(1)
  return Summary(files=len(paths), predicted=predicted, unreadable=len(paths) - predicted)
