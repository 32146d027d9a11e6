"""Evaluation of trained checkpoints: ``--mode=eval`` writes every metric to ``workdir/eval_<split>.json``.

One checkpoint, or several (``config.eval.checkpoints``) whose logits are averaged: an ensemble. Test-time
augmentation (``config.eval.tta``) averages the logits of mirrored and/or cropped views of each image; resize and
center crop belong in ``config.data.pp_eval``. Beside the JSON: the confusion matrix as JSON and a heatmap PNG,
and a reliability diagram (single-label data).
"""

import json
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from vitjax import data, losses, models, sharding, transfer
from vitjax.errors import ConfigError
from vitjax.evaluate import metrics, plots

TTA = ("none", "flip", "five_crop", "ten_crop")


def tta_views(images: jax.Array, *, mode: str, crop_size: int = 0) -> list[jax.Array]:
  """The views whose logits are averaged: the image; + its mirror (`flip`); the 4 corner and the center
  `crop_size` crops (`five_crop`); + their mirrors (`ten_crop`)."""
  if mode not in TTA:
    raise ConfigError(f"Unknown config.eval.tta={mode!r}; choose one of: {', '.join(TTA)}.")
  if mode == "none":
    return [images]
  if mode == "flip":
    return [images, images[:, :, ::-1]]
  height, width = images.shape[1:3]
  if not 0 < crop_size <= min(height, width):
    raise ConfigError(
      f"config.eval.tta={mode!r} needs 0 < config.eval.crop_size <= the eval image size "
      f"{height}x{width} (make pp_eval resize larger than the crop), got {crop_size}."
    )
  dy, dx = height - crop_size, width - crop_size
  corners = [(0, 0), (0, dx), (dy, 0), (dy, dx), (dy // 2, dx // 2)]
  crops = [images[:, y : y + crop_size, x : x + crop_size] for y, x in corners]
  return crops + [crop[:, :, ::-1] for crop in crops] if mode == "ten_crop" else crops


def check_options(options: ml_collections.ConfigDict) -> None:
  """Fails before any data is read when `config.eval` asks for an unknown or incomplete test-time augmentation."""
  if options.tta not in TTA:
    raise ConfigError(f"Unknown config.eval.tta={options.tta!r}; choose one of: {', '.join(TTA)}.")
  if options.tta.endswith("_crop") and options.crop_size <= 0:
    raise ConfigError(f"config.eval.tta={options.tta!r} needs config.eval.crop_size, the model's input size.")


def make_logits_fn(model, *, tta: str = "none", crop_size: int = 0) -> Callable[[Any, jax.Array], jax.Array]:
  """`logits(variables, images)`: the model in eval mode, averaged over the test-time views."""

  def logits_fn(variables: Any, images: jax.Array) -> jax.Array:
    views = tta_views(images, mode=tta, crop_size=crop_size)
    return jnp.mean(jnp.stack([model.apply(variables, v, train=False).astype(jnp.float32) for v in views]), axis=0)

  return logits_fn


def collect_logits(
  logits_fn: Callable, variables: Any, batches: Iterable[dict[str, np.ndarray]], mesh: jax.sharding.Mesh
) -> tuple[np.ndarray, np.ndarray]:
  """(logits, float targets) of every real (`mask` 1) example of `batches`, gathered on every process."""
  replicated, batch_sharding = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  variables = jax.device_put(variables, replicated)
  step = jax.jit(
    lambda v, batch: (logits_fn(v, batch["image"]), batch["labels"], batch["mask"]), out_shardings=replicated
  )
  logits, targets = [], []
  for batch in batches:
    placed = sharding.to_global({k: batch[k] for k in ("image", "labels", "mask")}, batch_sharding)
    batch_logits, batch_targets, mask = (np.asarray(x) for x in step(variables, placed))
    logits.append(batch_logits[mask > 0])
    targets.append(batch_targets[mask > 0])
  return np.concatenate(logits), np.concatenate(targets)


def compute_metrics(
  logits: np.ndarray,
  targets: np.ndarray,
  *,
  multilabel: bool,
  loss_fn: Callable,
  threshold: float = 0.5,
  num_bins: int = 15,
) -> dict[str, Any]:
  """Every metric of the report from logits and float targets (one-hot, or multi-hot when `multilabel`).

  For multi-label data `accuracy` is precision@1: how often the top-scored label is one of the true ones.
  """
  results = {"num_examples": len(logits), "loss": float(np.mean(loss_fn(logits, targets)))}
  if multilabel:
    scores = metrics.multilabel_metrics(metrics.sigmoid(logits), targets, threshold=threshold)
    precision_at_1 = float(np.mean(targets[np.arange(len(logits)), logits.argmax(axis=1)] > 0))
    return {**results, "accuracy": precision_at_1, "precision_at_1": precision_at_1, **scores}
  return {**results, **metrics.classification_metrics(logits, targets.argmax(axis=1), num_bins=num_bins)}


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates `config.eval.checkpoints` (default: `workdir`'s newest checkpoint) on `config.data.eval_split`.

  Writes `eval_<split>.json` (and the plots) into `workdir` and returns the same dict.
  """
  options = config.eval
  check_options(options)
  source = data.from_config(config.data)
  loss_fn = losses.from_config(config.loss)
  mesh = sharding.mesh_from_config(config)
  sharding.first_process_first(lambda: data.prepare(source))
  class_names = data.class_names(source)
  model = models.from_config(config.model, num_classes=len(class_names))
  eval_ds = data.eval_dataset(
    source,
    config.data,
    batch_size=config.eval_batch_size // jax.process_count(),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  logits_fn = make_logits_fn(model, tta=options.tta, crop_size=options.crop_size)
  image_shape = jax.eval_shape(
    lambda x: tta_views(x, mode=options.tta, crop_size=options.crop_size)[0],
    jax.ShapeDtypeStruct((1, *eval_ds.element_spec["image"].shape[1:]), jnp.float32),
  ).shape[1:]
  abstract = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), image_shape=image_shape))
  logits, targets, members = ensemble_logits(
    logits_fn, abstract, options.checkpoints or (workdir,), lambda: data.as_numpy(eval_ds), mesh, ema=options.use_ema
  )
  results = {
    "config": config.name,
    "model": config.model.name,
    "dataset": config.data.dataset,
    "split": config.data.eval_split,
    "step": members[0]["step"],
    "train_seconds": sum(m["train_seconds"] for m in members),
    "members": members,
    "tta": options.tta,
    **compute_metrics(
      logits,
      targets,
      multilabel=source.multilabel,
      loss_fn=loss_fn,
      threshold=options.multilabel_threshold,
      num_bins=options.calibration_bins,
    ),
  }
  if jax.process_index() == 0:
    write_report(results, workdir, class_names=class_names)
  return results


def ensemble_logits(
  logits_fn: Callable, abstract: Any, paths: Iterable[str], batches: Callable, mesh: jax.sharding.Mesh, *, ema: bool
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
  """(mean logits over the checkpoints at `paths`, targets, one record per member) on `batches()`."""
  members, total, targets = [], None, None
  for path in paths:
    variables, meta = transfer.load_variables(path, abstract, params_key="ema_params" if ema else "params")
    logging.info("Evaluating %s (step %s).", path, meta.get("step"))
    logits, targets = collect_logits(logits_fn, variables, batches(), mesh)
    total = logits if total is None else total + logits
    members.append({"checkpoint": path, "step": meta.get("step"), "train_seconds": meta.get("train_seconds", 0.0)})
  return total / len(members), targets, members


def split_file_name(split: str) -> str:
  """A split as it appears in report file names: ``test[:64]`` -> ``test_64``."""
  return re.sub(r"[^\w.-]+", "_", split).strip("_")


def write_report(results: dict[str, Any], workdir: str, *, class_names: list[str]) -> None:
  """`eval_<split>.json` with every metric (per-class ones keyed by class name), and for single-label data
  `confusion_<split>.json` / `.png` and `reliability_<split>.png`."""
  split = split_file_name(results["split"])
  title = f"{results['model']} on {results['dataset']}:{results['split']}"
  report = dict(results)
  per_class = ("precision", "recall", "f1", "support", "average_precision")
  report["per_class"] = {
    name: {k: _plain(report[k][i]) for k in per_class if k in report} for i, name in enumerate(class_names)
  }
  for key in per_class:
    report.pop(key, None)
  if "confusion_matrix" in report:
    confusion = report.pop("confusion_matrix")
    bins = report.pop("calibration")
    report["calibration"] = bins
    with open(os.path.join(workdir, f"confusion_{split}.json"), "w") as f:
      json.dump(
        {"class_names": class_names, "rows": "true class", "columns": "predicted class", "matrix": confusion.tolist()},
        f,
      )
    plots.plot_confusion_matrix(confusion, class_names, os.path.join(workdir, f"confusion_{split}.png"), title=title)
    plots.plot_reliability_diagram(bins, os.path.join(workdir, f"reliability_{split}.png"), title=title)
  with open(os.path.join(workdir, f"eval_{split}.json"), "w") as f:
    json.dump(_plain(report), f, indent=2)


def _plain(value: Any) -> Any:
  """JSON-ready: numpy arrays and scalars as lists and Python numbers, NaN as None, through dicts and lists."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, np.ndarray):
    return _plain(value.tolist())
  if isinstance(value, (float, np.floating)):
    return None if np.isnan(value) else float(value)
  if isinstance(value, np.integer):
    return int(value)
  return value
