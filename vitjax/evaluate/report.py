"""Evaluation of trained checkpoints: ``--mode=eval`` runs the evaluators of ``config.evals`` (registry.py) on a
run and writes every metric to ``workdir/eval_<split>.json``; the helpers the classification evaluator shares.

One checkpoint, or several (``config.eval.checkpoints``) whose logits are averaged: an ensemble. Test-time
augmentation (``config.eval.tta``) averages the logits of mirrored and/or cropped views of each image; resize and
center crop belong in ``config.data.pp_eval``. Beside the JSON: the confusion matrix as JSON and a heatmap PNG,
and a reliability diagram (single-label data).
"""

import functools
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

from vitjax import checkpoints, data, losses, models, sharding, transfer
from vitjax.errors import ConfigError
from vitjax.evaluate import metrics, plots, registry

TTA = ("none", "flip", "five_crop", "ten_crop")


def tta_views(images: jax.Array, *, mode: str, crop_size: int = 0) -> list[jax.Array]:
  """The views whose logits are averaged: the image; + its mirror (`flip`); the 4 corner and the center
  `crop_size` crops (`five_crop`); + their mirrors (`ten_crop`)."""
  if mode not in TTA:
    raise ConfigError(f"Unknown config.eval.tta={mode!r}; choose one of: {', '.join(TTA)}.")
  if mode == "none":
    return [images]
  if images.ndim != 4:
    raise ConfigError(f"config.eval.tta={mode!r} transforms image batches; these are {images.shape} (NaFlex patches).")
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
  """(logits, float targets) of every real (`mask` 1) example of `batches`, gathered on every process.

  Host arrays among `variables` are replicated on `mesh`; device arrays (a training state's) stay where they are.
  """
  replicated, batch_sharding = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  variables = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jax.device_put(x, replicated), variables)
  step = _logits_step(logits_fn, replicated)
  logits, targets = [], []
  for batch in batches:
    placed = sharding.to_global({k: batch[k] for k in ("image", "labels", "mask")}, batch_sharding)
    batch_logits, batch_targets, mask = (np.asarray(x) for x in step(variables, placed))
    logits.append(batch_logits[mask > 0])
    targets.append(batch_targets[mask > 0])
  return np.concatenate(logits), np.concatenate(targets)


@functools.lru_cache(maxsize=32)
def _logits_step(logits_fn: Callable, out_sharding: jax.sharding.NamedSharding) -> Callable:
  """The jitted step of `collect_logits`, one per logits function: an evaluator that runs at every evaluation of a
  training run compiles it once."""
  return jax.jit(
    lambda v, batch: (logits_fn(v, batch["image"]), batch["labels"], batch["mask"]), out_shardings=out_sharding
  )


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
  """Runs the evaluators of `config.evals` once on a trained run; writes their reports into `workdir` and returns
  the metrics of the unprefixed classification entry (`eval_<split>.json`) with every other entry's numbers.

  The model, its class names and the run's own config come from the run (`checkpoints.load_run`): `workdir`, or
  when it holds none the first of `config.eval.checkpoints` that is one (only public files: the command line's
  config describes the model). The command line chooses what to evaluate and how: `config.eval` (checkpoints,
  several averaged as an ensemble; test-time views; the moving average), `config.evals`, the eval batch size and
  the mesh.
  """
  options = config.eval
  check_options(options)
  paths = tuple(options.checkpoints) or (workdir,)
  run_path, run = _find_run(workdir, paths)
  run_config = _with_eval_choices(run.config, config) if run else config
  registry.check(run_config)
  setting = _setting(run_config, run, options)
  evals = registry.from_config(run_config, setting)
  weights, members = _weights(setting, paths, (run_path, run), ema=options.use_ema)
  outputs = list(registry.run(evals, weights))
  header = {
    "config": run_config.name,
    "model": run_config.model.name,
    "step": members[0]["step"],
    "train_seconds": sum(m["train_seconds"] for m in members),
    "members": members,
    "tta": options.tta,
  }
  main = next(found for entry, found in outputs if entry.type == "classification" and not entry.prefix)
  others = [registry.scalars(found, entry.prefix) for entry, found in outputs if found is not main]
  results = {**header, **main, **{k: v for numbers in others for k, v in numbers.items()}}
  if jax.process_index() == 0:
    for entry, found in outputs:
      entry.evaluator.write_report(
        results if found is main else {**header, **found}, workdir, prefix=entry.prefix, class_names=setting.class_names
      )
  return results


def _find_run(workdir: str, paths: tuple[str, ...]) -> tuple[str | None, checkpoints.Run | None]:
  """(path, run) of the run that describes the model: `workdir` or the first of `paths` holding a run's config."""
  for path in (workdir, *paths):
    if os.path.exists(os.path.join(path, checkpoints.CONFIG_FILE)):
      return path, checkpoints.load_run(path)
  if paths == (workdir,):
    return workdir, checkpoints.load_run(workdir)  # Fails naming what is missing.
  return None, None


def _with_eval_choices(run_config: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
  """The run's config (model, data, loss) with the command line's choices of what to evaluate and how."""
  merged = ml_collections.ConfigDict(run_config.to_dict())
  for key in ("eval", "evals", "eval_batch_size", "mesh"):
    merged[key] = config[key]
  return merged


def _setting(config: ml_collections.ConfigDict, run, options: ml_collections.ConfigDict) -> registry.Setting:
  source, target = data.from_config(config.data), data.target_from_config(config.data)
  for each in (source, target) if target else (source,):
    sharding.first_process_first(lambda each=each: data.prepare(each))
  class_names = run.class_names if run else data.class_names(source)
  return registry.Setting(
    config=config,
    model=models.from_config(config.model, num_classes=len(class_names)),
    source=source,
    target=target,
    loss_fn=losses.from_config(config.loss),
    mesh=sharding.mesh_from_config(config),
    class_names=class_names,
    tta=options.tta,
    crop_size=options.crop_size,
  )


def _weights(setting: registry.Setting, paths, found, *, ema: bool) -> tuple[registry.Weights, list[dict[str, Any]]]:
  """The variables of every checkpoint at `paths` (the run's own from `found`, the run and its path), placed on the
  mesh, and a record of each (checkpoint, step, train seconds)."""
  (run_path, run), members, variables = found, [], []
  for path in paths:
    if run is not None and os.path.abspath(path) == os.path.abspath(run_path):
      each, meta = run.variables(ema=ema), run.meta
    else:
      each, meta = transfer.load_variables(path, _abstract(setting), params_key="ema_params" if ema else "params")
    logging.info("Evaluating %s (step %s).", path, meta.get("step"))
    variables.append(jax.device_put(each, sharding.replicated(setting.mesh)))
    members.append({"checkpoint": path, "step": meta.get("step"), "train_seconds": meta.get("train_seconds", 0.0)})
  return registry.Weights(members=tuple(variables)), members


def _abstract(setting: registry.Setting) -> Any:
  """The model's variables as shapes, at the size its eval images reach it (after test-time cropping)."""
  spec = setting.dataset("source", setting.config.data.eval_split).element_spec["image"]
  image_shape = jax.eval_shape(
    lambda x: tta_views(x, mode=setting.tta, crop_size=setting.crop_size)[0],
    jax.ShapeDtypeStruct((1, *spec.shape[1:]), jnp.float32),
  ).shape[1:]
  return jax.eval_shape(lambda: models.init_variables(setting.model, jax.random.key(0), image_shape=image_shape))


def split_file_name(split: str) -> str:
  """A split as it appears in report file names: ``test[:64]`` -> ``test_64``."""
  return re.sub(r"[^\w.-]+", "_", split).strip("_")


def write_report(results: dict[str, Any], workdir: str, *, class_names: list[str], name: str | None = None) -> None:
  """`eval_<name>.json` with every metric (per-class ones keyed by class name), and for single-label data
  `confusion_<name>.json` / `.png` and `reliability_<name>.png`; `name` defaults to the split's."""
  split = name or split_file_name(results["split"])
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
