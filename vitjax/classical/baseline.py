"""`--mode=baseline`: every hand-crafted feature x classical classifier pair of `config.baseline`, fitted on
`config.data.train_split` and reported on `config.data.eval_split` the way `--mode=eval` reports a deep model.

Writes into the workdir, beside (never over) a run's own files:

- `baseline.json`: the comparison table, a `results` row per pair (feature, classifier, accuracy, fit_seconds,
  predict_seconds, ...), the best pair, and the deep model's accuracy on the same split when the workdir holds a
  run;
- `baseline/<feature>-<classifier>/`: per pair `eval_<split>.json` (top-1, per-class precision/recall/F1, macro
  and weighted means, ...) and the confusion matrix as JSON and PNG, as `--mode=eval` writes them;
- `baseline/model.skops`: the best pair's fitted pipeline, for `classical.predict`.

fit_seconds counts fitting the feature (the SIFT vocabulary), computing it on the training images and fitting
the classifier (and its search); predict_seconds counts computing the feature on the eval images and scoring them.
Reading, decoding and resizing the images is shared by all pairs and counted in neither.
"""

import dataclasses
import functools
import json
import os
import time
from typing import Any

import ml_collections
import numpy as np
import threadpoolctl
from absl import logging
from sklearn import pipeline

from vitjax import data, losses
from vitjax.classical import classifiers, features, images, model
from vitjax.errors import ConfigError
from vitjax.evaluate import report

SUMMARY_FILE = "baseline.json"


@dataclasses.dataclass
class Pair:
  """One feature x classifier: its fitted pipeline, its times, and the hyper-parameters a search chose."""

  feature: str
  classifier: str
  fitted: pipeline.Pipeline
  fit_seconds: float
  dimensions: int
  params: dict[str, Any] | None
  predict_seconds: float = 0.0


def check(options: ml_collections.ConfigDict, seed: int) -> None:
  """Fails on a bad `config.baseline` before any data is read, naming the choices."""
  if not options.features or not options.classifiers:
    raise ConfigError("config.baseline.features and config.baseline.classifiers each need at least one entry.")
  for spec in options.features:
    features.from_config(spec, options, seed=seed)
  for name in options.classifiers:
    classifiers.check(name)
  for key in ("image_size", "max_train_examples", "batch_size", "cv_folds"):
    if options[key] < (2 if key == "cv_folds" else 1):
      raise ConfigError(f"config.baseline.{key} must be positive (cv_folds at least 2), got {options[key]}.")


def run_baseline(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fits and reports every pair, saves the best, prints and writes the comparison table; returns it."""
  check(config.baseline, config.seed)
  # scikit-learn's OpenMP and BLAS threads on `n_jobs` cores too: more threads than free cores slow k-means and
  # the SVMs down several times on a busy machine.
  with threadpoolctl.threadpool_limits(limits=config.baseline.n_jobs if config.baseline.n_jobs > 0 else None):
    return _run(config, workdir)


def _run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`run_baseline` within its thread limits: read, fit, score, write."""
  options = config.baseline
  source = data.from_config(config.data)
  if source.multilabel:
    raise ConfigError(f"--mode=baseline fits single-label classifiers; {source.name!r} is multi-label.")
  data.prepare(source)
  class_names = data.class_names(source)
  deep = deep_model(workdir, config.data.eval_split)
  os.makedirs(os.path.join(workdir, model.DIRECTORY), exist_ok=True)
  read = functools.partial(
    images.split_batches, source, config.data, size=options.image_size, batch_size=options.batch_size
  )
  train_images, train_labels, seen = images.stratified_sample(
    read(split=config.data.train_split), num_classes=len(class_names), cap=options.max_train_examples, seed=config.seed
  )
  images.log_sample(config.data.train_split, len(train_labels), seen, options.max_train_examples)
  pairs = fit_pairs(train_images, train_labels, options, seed=config.seed)
  del train_images
  logits, labels = score_pairs(pairs, read(split=config.data.eval_split), num_classes=len(class_names))
  rows = [
    write_pair_report(config, workdir, pair, scores, labels, class_names=class_names)
    for pair, scores in zip(pairs, logits)
  ]
  best_index = int(np.argmax([row["accuracy"] for row in rows]))  # The first of equals.
  best = pairs[best_index]
  model.save(
    os.path.join(workdir, model.MODEL_PATH),
    best.fitted,
    class_names=class_names,
    pp_eval=config.data.pp_eval,
    image_size=options.image_size,
    feature=best.feature,
    classifier=best.classifier,
  )
  summary = {
    "config": config.name,
    "dataset": config.data.dataset,
    "train_split": config.data.train_split,
    "eval_split": config.data.eval_split,
    "num_train_examples": len(train_labels),
    "num_train_seen": seen,
    "num_eval_examples": len(labels),
    "image_size": options.image_size,
    "results": rows,
    "best": {**{k: rows[best_index][k] for k in ("feature", "classifier", "accuracy")}, "model": model.MODEL_PATH},
    "deep_model": deep,
  }
  with open(os.path.join(workdir, SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=2)
  print(format_table(summary), flush=True)
  return summary


def transform(transformer, pixels: np.ndarray, batch_size: int) -> np.ndarray:
  """A fitted feature of `pixels`, computed `batch_size` images at a time."""
  return np.concatenate([transformer.transform(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])


def fit_pairs(pixels: np.ndarray, labels: np.ndarray, options: ml_collections.ConfigDict, *, seed: int) -> list[Pair]:
  """Every feature x classifier fitted on the training images; a feature is fitted and computed once for all
  its classifiers, which share it."""
  pairs = []
  for spec in options.features:
    start = time.perf_counter()
    transformer = features.from_config(spec, options, seed=seed).fit(pixels)
    train_features = transform(transformer, pixels, options.batch_size)
    feature_seconds = time.perf_counter() - start
    logging.info("Feature %s: %d dimensions in %.1fs.", spec, train_features.shape[1], feature_seconds)
    for name in options.classifiers:
      start = time.perf_counter()
      head = classifiers.from_config(name, options, seed=seed)
      head, chosen = classifiers.fit(head, name, train_features, labels, options, seed=seed)
      pairs.append(
        Pair(
          feature=spec,
          classifier=name,
          fitted=pipeline.Pipeline([("features", transformer), *head.steps]),
          fit_seconds=feature_seconds + time.perf_counter() - start,
          dimensions=train_features.shape[1],
          params=chosen,
        )
      )
  return pairs


def score_pairs(pairs: list[Pair], batches, *, num_classes: int) -> tuple[list[np.ndarray], np.ndarray]:
  """(each pair's logits, the labels) over the eval batches, read once: per batch each feature is computed once
  and scored by each of its classifiers; adds the time to each pair's `predict_seconds`."""
  logits, labels = [[] for _ in pairs], []
  by_feature: dict[str, list[int]] = {}
  for index, pair in enumerate(pairs):
    by_feature.setdefault(pair.feature, []).append(index)
  for batch_pixels, batch_labels in batches:
    labels.append(batch_labels)
    for indices in by_feature.values():
      start = time.perf_counter()
      batch_features = pairs[indices[0]].fitted[0].transform(batch_pixels)
      feature_seconds = time.perf_counter() - start
      for index in indices:
        start = time.perf_counter()
        logits[index].append(classifiers.scores(pairs[index].fitted[1:], batch_features, num_classes=num_classes))
        pairs[index].predict_seconds += feature_seconds + time.perf_counter() - start
  if not labels:
    raise ConfigError("The evaluation split has no readable examples.")
  return [np.concatenate(pair_logits) for pair_logits in logits], np.concatenate(labels)


def write_pair_report(
  config: ml_collections.ConfigDict,
  workdir: str,
  pair: Pair,
  logits: np.ndarray,
  labels: np.ndarray,
  *,
  class_names: list[str],
) -> dict[str, Any]:
  """The pair's `eval_<split>.json` and confusion matrix, as `--mode=eval` writes them; returns its table row."""
  directory = os.path.join(model.DIRECTORY, f"{pair.feature}-{pair.classifier}")
  os.makedirs(os.path.join(workdir, directory), exist_ok=True)
  metrics = report.compute_metrics(
    logits,
    np.eye(len(class_names), dtype=np.float32)[labels],
    multilabel=False,
    loss_fn=losses.from_config(config.loss),
    num_bins=config.eval.calibration_bins,
  )
  row = {
    "feature": pair.feature,
    "classifier": pair.classifier,
    "accuracy": metrics["accuracy"],
    "fit_seconds": round(pair.fit_seconds, 3),
    "predict_seconds": round(pair.predict_seconds, 3),
    "macro_f1": metrics["macro_f1"],
    "feature_dimensions": pair.dimensions,
    "params": pair.params,
    "report": f"{directory}/eval_{report.split_file_name(config.data.eval_split)}.json",
  }
  results = {
    "config": config.name,
    "model": f"{pair.feature} + {pair.classifier}",
    "dataset": config.data.dataset,
    "split": config.data.eval_split,
    **{key: row[key] for key in ("feature", "classifier", "fit_seconds", "predict_seconds", "params")},
    **metrics,
  }
  report.write_report(results, os.path.join(workdir, directory), class_names=class_names)
  return row


def deep_model(workdir: str, split: str) -> dict[str, Any] | None:
  """The accuracy of the run in `workdir` on `split`, from `--mode=eval`'s report or training's `results.json`;
  None when there is no run there or it was scored on another split."""
  for name in (f"eval_{report.split_file_name(split)}.json", "results.json"):
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
      continue
    with open(path) as f:
      found = json.load(f)
    if found["split"] == split:
      return {"source": name, "model": found["model"], "step": found["step"], "accuracy": found["accuracy"]}
    logging.info("%s scores split %r, not %r: no deep model to compare with.", path, found["split"], split)
  return None


def format_table(summary: dict[str, Any]) -> str:
  """The comparison table as text, best first, the deep model (when there is one) on the first line."""
  lines = [
    f"Classical baselines on {summary['dataset']}: {summary['num_train_examples']} {summary['train_split']} / "
    f"{summary['num_eval_examples']} {summary['eval_split']} examples at {summary['image_size']}px",
    f"{'feature':<24} {'classifier':<14} {'accuracy':>9} {'fit s':>8} {'predict s':>10}",
  ]
  deep = summary["deep_model"]
  if deep:
    where = f"({deep['source']}, step {deep['step']})"
    lines.append(f"{'deep model':<24} {deep['model']:<14} {100 * deep['accuracy']:>8.2f}%   {where}")
  for row in sorted(summary["results"], key=lambda row: -row["accuracy"]):
    lines.append(
      f"{row['feature']:<24} {row['classifier']:<14} {100 * row['accuracy']:>8.2f}% "
      f"{row['fit_seconds']:>8.2f} {row['predict_seconds']:>10.2f}"
    )
  return "\n".join(lines)
