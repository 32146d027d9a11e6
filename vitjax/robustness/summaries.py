"""The numbers of `robustness.json` from a sweep's per-example outcomes and held-out logits: accuracy under attack
and corruption, mean corruption error against a reference run, calibration, label shift and MC dropout."""

from typing import Any

import ml_collections
import numpy as np

from vitjax.errors import ConfigError
from vitjax.evaluate import metrics
from vitjax.robustness import corruptions, shift, uncertainty
from vitjax.robustness.sweep import radii


def adversarial_table(swept: dict[str, np.ndarray], options: ml_collections.ConfigDict) -> dict[str, dict[str, float]]:
  """{attack: {epsilon in pixel units as text: accuracy}}."""
  return {
    name: {f"{eps:g}": float(np.mean(swept[f"{name}/{eps:g}"])) for eps in radii(options, name)}
    for name in options.attacks
  }


def corruption_table(swept: dict[str, np.ndarray], kinds, clean: float) -> dict[str, dict[str, float]]:
  """{corruption: {severity as text, "0" being the clean images: accuracy}}."""
  return {
    kind: {"0": clean, **{str(s): float(np.mean(swept[f"{kind}/{s}"])) for s in corruptions.SEVERITIES}}
    for kind in kinds
  }


def mean_corruption_error(
  table: dict[str, dict[str, float]], clean: float, reference: dict[str, Any]
) -> dict[str, Any]:
  """Hendrycks & Dietterich's mCE: per corruption, the errors summed over severities 1-5 over the reference run's;
  their mean. The relative mCE does the same with errors above each run's clean error."""
  missing = sorted(set(table) - set(reference["corruptions"]))
  if missing:
    raise ConfigError(f"config.robustness.reference has no results for corruptions {missing}: rerun it with them.")
  per_kind, relative = {}, {}
  for kind, row in table.items():
    ref = reference["corruptions"][kind]
    errors = np.array([1.0 - row[str(s)] for s in corruptions.SEVERITIES])
    ref_errors = np.array([1.0 - ref[str(s)] for s in corruptions.SEVERITIES])
    per_kind[kind] = float(errors.sum() / max(ref_errors.sum(), 1e-12))
    ref_gap = np.sum(ref_errors - (1.0 - reference["clean"]))
    relative[kind] = float(np.sum(errors - (1.0 - clean)) / ref_gap) if abs(ref_gap) > 1e-12 else float("nan")
  return {
    "mce": float(np.mean(list(per_kind.values()))),
    "relative_mce": float(np.nanmean(list(relative.values())))
    if not np.all(np.isnan(list(relative.values())))
    else None,
    "corruption_error": per_kind,
    "relative_corruption_error": relative,
  }


def calibration_summary(
  heldout: tuple[np.ndarray, np.ndarray], evaluated: tuple[np.ndarray, np.ndarray], *, num_bins: int
) -> dict[str, float]:
  """Temperature scaling fitted on the held-out (logits, labels); ECE and NLL on the evaluated ones before and
  after, and the held-out NLL before and after (the fit never raises it)."""
  temperature = uncertainty.fit_temperature(*heldout)
  logits, labels = evaluated

  def ece(t: float) -> float:
    return metrics.calibration(metrics.softmax(logits / t), labels, num_bins=num_bins)["ece"]

  return {
    "temperature": temperature,
    "ece_before": ece(1.0),
    "ece_after": ece(temperature),
    "nll_before": uncertainty.nll(logits, labels),
    "nll_after": uncertainty.nll(logits, labels, temperature),
    "heldout_nll_before": uncertainty.nll(*heldout),
    "heldout_nll_after": uncertainty.nll(*heldout, temperature),
  }


def label_shift_summary(
  heldout: tuple[np.ndarray, np.ndarray],
  evaluated: tuple[np.ndarray, np.ndarray],
  options: ml_collections.ConfigDict,
  *,
  seed: int,
) -> dict[str, Any]:
  """BBSE on `options.trials` resamplings of the evaluated split to the configured prior (confusion matrix from
  the held-out split): mean and spread of each number of `shift.evaluate_shift`."""
  (held_logits, held_labels), (logits, labels) = heldout, evaluated
  held_probs, probs = metrics.softmax(held_logits.astype(np.float64)), metrics.softmax(logits.astype(np.float64))
  size = options.num_examples or len(labels)
  trials = []
  for trial in range(options.trials):
    rng = np.random.default_rng([seed, trial])
    prior = shift.target_prior(options.prior, probs.shape[1], rng, alpha=options.alpha, rho=options.rho)
    picked = shift.resample(labels, prior, size, rng)
    trials.append(shift.evaluate_shift(held_probs, held_labels, probs[picked], labels[picked]))
  keys = trials[0].keys()
  return {
    "prior": options.prior,
    "trials": options.trials,
    "num_examples": size,
    **{key: float(np.mean([t[key] for t in trials])) for key in keys},
    **{f"{key}_std": float(np.std([t[key] for t in trials])) for key in ("accuracy", "corrected_accuracy")},
  }


def mc_dropout_summary(swept: dict[str, np.ndarray], *, passes: int, dropout_rate: float | None) -> dict[str, Any]:
  """Accuracy of the MC-dropout mean, mean predictive entropy and mutual information, and the ROC AUC of each
  (and of the deterministic model's 1 - max probability) for telling wrong predictions from right ones."""
  labels, probs = swept["labels"], swept["mc_dropout/probs"]
  errors = probs.argmax(1) != labels
  deterministic = metrics.softmax(swept["logits"].astype(np.float64))
  return {
    "passes": passes,
    "dropout_rate": dropout_rate,
    "accuracy": float(np.mean(~errors)),
    "entropy": float(np.mean(swept["mc_dropout/entropy"])),
    "mutual_information": float(np.mean(swept["mc_dropout/mutual_information"])),
    "auroc_entropy": uncertainty.error_detection_auroc(swept["mc_dropout/entropy"], errors),
    "auroc_mutual_information": uncertainty.error_detection_auroc(swept["mc_dropout/mutual_information"], errors),
    "auroc_max_probability": uncertainty.error_detection_auroc(
      1.0 - deterministic.max(1), deterministic.argmax(1) != labels
    ),
  }
