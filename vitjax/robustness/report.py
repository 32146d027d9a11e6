"""`--mode=robustness`: how a trained run holds up, written to ``workdir/robustness.json`` with a plot beside it.

On `config.data.eval_split`: clean accuracy; accuracy under FGSM and PGD (L-inf, L2) at radii in pixel levels;
accuracy under common corruptions at severities 0-5 (``robustness_corruptions.png``), with mean corruption error
when `config.robustness.reference` names a run measured the same way; MC-dropout uncertainty and how well it flags
errors. With held-out labelled examples (`calibration_split`, by default a random `calibration_fraction` of the eval
split, the rest of which then scores them, so that nothing the run trained on is used): temperature scaling and its
ECE before and after, and label shift (the scored examples resampled to another class prior) corrected by BBSE.
The run is read through `checkpoints.load_run`; `config` gives the data and the robustness options.
"""

import json
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from matplotlib.figure import Figure

from vitjax import checkpoints, data, models, sharding
from vitjax.errors import ConfigError
from vitjax.evaluate import report as eval_report
from vitjax.robustness import attacks, corruptions, shift, summaries, sweep

REPORT_FILE, PLOT_FILE = "robustness.json", "robustness_corruptions.png"


def check_options(options: ml_collections.ConfigDict) -> None:
  """Fails before any data is read on an option no measurement can use, naming the key."""
  unknown = [name for name in options.attacks if name not in attacks.ATTACKS]
  if unknown:
    raise ConfigError(f"Unknown config.robustness.attacks {unknown}; choose from: {', '.join(attacks.ATTACKS)}.")
  for key in ("epsilons", "l2_epsilons"):
    if any(eps < 0 for eps in options[key]):
      raise ConfigError(f"config.robustness.{key} must be >= 0 (pixel levels of 1/255), got {options[key]}.")
  if options.steps < 1 or options.relative_step_size <= 0:
    raise ConfigError("config.robustness.steps must be >= 1 and relative_step_size > 0.")
  corruptions.check_kinds(tuple(options.corruptions))
  if options.label_shift.prior not in shift.PRIORS:
    raise ConfigError(
      f"Unknown config.robustness.label_shift.prior={options.label_shift.prior!r}; "
      f"choose one of: {', '.join(shift.PRIORS)}."
    )
  if options.label_shift.trials < 1 or options.mc_dropout.passes < 1:
    raise ConfigError("config.robustness.label_shift.trials and mc_dropout.passes must be >= 1.")
  if not 0 < options.calibration_fraction < 1:
    raise ConfigError(f"config.robustness.calibration_fraction must be in (0, 1), got {options.calibration_fraction}.")


def split_off_heldout(
  logits: np.ndarray, labels: np.ndarray, fraction: float, *, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """((logits, labels) of a random `fraction` of the examples, those of the others): disjoint, whatever the order."""
  order = np.random.default_rng(seed).permutation(len(labels))
  held, rest = np.sort(order[: round(fraction * len(labels))]), np.sort(order[round(fraction * len(labels)) :])
  return (logits[held], labels[held]), (logits[rest], labels[rest])


def _warn_if_seen(config: ml_collections.ConfigDict, run_config: ml_collections.ConfigDict) -> None:
  """Temperature and the BBSE confusion fitted on examples the run trained on are biased (near-perfect there)."""
  split, trained = config.robustness.calibration_split, run_config.data.train_split
  if split and re.fullmatch(r"\w+", trained) and split.split("[")[0] == trained:
    logging.warning(
      "config.robustness.calibration_split=%s is part of the run's training split %s: leave it unset (a share of "
      "the eval split) or name examples the run never saw, for an unbiased temperature and label-shift confusion.",
      split,
      trained,
    )


def _mc_model_config(model_config: ml_collections.ConfigDict, dropout_rate: float | None):
  """The run's model config, with `dropout_rate` when MC dropout asks for another one."""
  model_config = ml_collections.ConfigDict(model_config.to_dict())
  if dropout_rate is not None:
    model_config.dropout_rate = dropout_rate
  return model_config


def _reference(path: str | None) -> dict[str, Any] | None:
  if not path:
    return None
  report_path = os.path.join(path, REPORT_FILE)
  if not os.path.exists(report_path):
    raise ConfigError(f"config.robustness.reference={path!r} has no {REPORT_FILE}: run --mode=robustness on it first.")
  with open(report_path) as f:
    return json.load(f)


def evaluate_robustness(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Measures the newest checkpoint of `workdir` as the module says; writes the report and plot, prints a line."""
  options = config.robustness
  check_options(options)
  reference = _reference(options.reference)
  run = checkpoints.load_run(workdir)
  _warn_if_seen(config, run.config)
  source = data.from_config(config.data)
  sharding.first_process_first(lambda: data.prepare(source))
  mesh = sharding.mesh_from_config(config)
  num_classes = len(run.class_names)
  model = models.from_config(run.config.model, num_classes=num_classes)
  mc_model = models.from_config(
    _mc_model_config(run.config.model, options.mc_dropout.dropout_rate), num_classes=num_classes
  )
  variables = jax.device_put(run.variables(), sharding.replicated(mesh))
  affine = data.pixel_affine(config.data.pp_eval)

  def batches(split: str):
    return data.as_numpy(
      data.eval_dataset(
        source,
        config.data,
        split=split,
        batch_size=config.eval_batch_size // jax.process_count(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
      )
    )

  fns = sweep.make_functions(model, mc_model, options, affine, mesh)
  swept = sweep.sweep(fns, variables, batches(config.data.eval_split), mesh, options, affine, seed=config.seed)
  heldout = None
  if options.calibration_split:
    held_logits, held_targets = eval_report.collect_logits(
      eval_report.make_logits_fn(model), variables, batches(options.calibration_split), mesh
    )
    heldout = (held_logits, held_targets.argmax(1))
  results = {
    "config": config.name,
    "model": run.config.model.name,
    "dataset": config.data.dataset,
    "split": config.data.eval_split,
    "step": run.meta.get("step"),
    "train_seconds": run.meta.get("train_seconds", 0.0),
    **measure(swept, heldout, config, reference),
  }
  if jax.process_index() == 0:
    write_report(results, workdir)
    print(summary_line(results), flush=True)
  return results


def measure(
  swept: dict[str, np.ndarray],
  heldout: tuple[np.ndarray, np.ndarray] | None,
  config: ml_collections.ConfigDict,
  reference,
) -> dict[str, Any]:
  """Every number of the report from the sweep of the eval split and the held-out (logits, labels); without them,
  a random `calibration_fraction` of the eval split is held out and calibration and label shift use the rest."""
  options = config.robustness
  evaluated = (swept["logits"], swept["labels"])
  heldout_name = options.calibration_split
  if heldout is None:
    heldout, evaluated = split_off_heldout(*evaluated, options.calibration_fraction, seed=config.seed)
    heldout_name = (
      f"{config.data.eval_split}: {len(heldout[1])} of {len(swept['labels'])} examples at random (seed {config.seed}); "
      f"calibration and label shift scored on the other {len(evaluated[1])}"
    )
  clean = float(np.mean(swept["logits"].argmax(1) == swept["labels"]))
  table = summaries.corruption_table(swept, options.corruptions, clean)
  results = {
    "num_examples": len(swept["labels"]),
    "accuracy": clean,
    "clean": clean,
    "adversarial": summaries.adversarial_table(swept, options),
    "attack": {
      "units": "pixel levels (1/255 of the range); pgd_l2: L2 norm of the pixel change",
      "steps": options.steps,
      "relative_step_size": options.relative_step_size,
      "random_start": options.random_start,
    },
    "corruptions": table,
    "mean_corruption_accuracy": float(np.mean([row[str(s)] for row in table.values() for s in corruptions.SEVERITIES]))
    if table
    else None,
    "calibration": {
      "split": heldout_name,
      **summaries.calibration_summary(heldout, evaluated, num_bins=config.eval.calibration_bins),
    },
    "label_shift": summaries.label_shift_summary(heldout, evaluated, options.label_shift, seed=config.seed),
    "mc_dropout": summaries.mc_dropout_summary(
      swept, passes=options.mc_dropout.passes, dropout_rate=options.mc_dropout.dropout_rate
    ),
  }
  if reference is not None and table:
    results["mce"] = {"reference": options.reference, **summaries.mean_corruption_error(table, clean, reference)}
  return results


def write_report(results: dict[str, Any], workdir: str) -> None:
  """`robustness.json` and, when corruptions were measured, the accuracy-against-severity plot beside it."""
  with open(os.path.join(workdir, REPORT_FILE), "w") as f:
    json.dump(_json_ready(results), f, indent=2)
  if results["corruptions"]:
    plot_severity(
      results["corruptions"],
      os.path.join(workdir, PLOT_FILE),
      title=f"{results['model']} on {results['dataset']}:{results['split']}",
    )


def _json_ready(value: Any) -> Any:
  """NaN (an undefined AUROC, say) as null, through dicts and lists: the report stays strict JSON."""
  if isinstance(value, dict):
    return {k: _json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_ready(v) for v in value]
  if isinstance(value, float) and np.isnan(value):
    return None
  return value


def plot_severity(table: dict[str, dict[str, float]], path: str, *, title: str = "") -> None:
  """Accuracy against severity (0 = clean) per corruption, and their mean, as a PNG."""
  fig = Figure(figsize=(8, 5))
  ax = fig.subplots()
  severities = list(range(len(corruptions.SEVERITIES) + 1))
  for kind, row in table.items():
    ax.plot(severities, [row[str(s)] for s in severities], "o-", markersize=3, label=kind)
  mean = np.mean([[row[str(s)] for s in severities] for row in table.values()], axis=0)
  ax.plot(severities, mean, "k--", linewidth=2.5, label="mean")
  ax.set_xlabel("severity")
  ax.set_ylabel("accuracy")
  ax.set_xticks(severities)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def summary_line(results: dict[str, Any]) -> str:
  """One line: clean accuracy, FGSM and PGD-L-inf at the middle radius, corruptions, calibration, label shift."""
  adversarial = results["adversarial"]
  parts = [f"Robustness on {results['num_examples']} examples: clean {100 * results['clean']:.1f}%"]
  for name in ("fgsm", "pgd_linf", "pgd_l2"):
    if name in adversarial and adversarial[name]:
      radius = sorted(adversarial[name], key=float)[len(adversarial[name]) // 2]
      parts.append(f"{name}@{radius} {100 * adversarial[name][radius]:.1f}%")
  if results["mean_corruption_accuracy"] is not None:
    parts.append(f"corruptions {100 * results['mean_corruption_accuracy']:.1f}%")
  if "mce" in results:
    parts.append(f"mCE {100 * results['mce']['mce']:.1f}%")
  calibration, label_shift = results["calibration"], results["label_shift"]
  before, after, temperature = calibration["ece_before"], calibration["ece_after"], calibration["temperature"]
  parts.append(f"ECE {100 * before:.2f}% -> {100 * after:.2f}% (T={temperature:.2f})")
  parts.append(
    f"label shift {100 * label_shift['accuracy']:.1f}% -> {100 * label_shift['corrected_accuracy']:.1f}% (BBSE)"
  )
  return ", ".join(parts) + "."
