"""Hyperparameter search with Optuna: a TPE sampler over learning rate, weight decay, label smoothing,
augmentation strength and epochs; a median pruner fed the validation accuracy of every evaluation of the run.

The study and its workers are study.py's; each trial is an ordinary run directory under the tune stage's folder.
"""

import os
import re
from collections.abc import Callable

import ml_collections
import optuna

from vitjax.train import hooks
from vitjax.workflow import runs


def sample(trial: optuna.Trial, space: ml_collections.ConfigDict) -> dict[str, float]:
  """One point of the search space (a continued trial gets its stored values back)."""
  return {
    "learning_rate": trial.suggest_float("learning_rate", *space.learning_rate, log=True),
    "weight_decay": trial.suggest_float("weight_decay", *space.weight_decay, log=True),
    "label_smoothing": trial.suggest_float("label_smoothing", *space.label_smoothing),
    "augmentation": trial.suggest_float("augmentation", *space.augmentation),
    "epochs": trial.suggest_float("epochs", *space.epochs),
  }


def apply(config: ml_collections.ConfigDict, params: dict[str, float], *, evals: int) -> ml_collections.ConfigDict:
  """`config` with a point of the search space: the optimizer, the loss, the crop padding, the steps."""
  config = runs.with_steps(config, params["epochs"], evals=evals)
  config.optimizer.learning_rate = params["learning_rate"]
  config.optimizer.weight_decay = params["weight_decay"]
  config.loss.label_smoothing = params["label_smoothing"]
  config.data.pp_train = augmented(config.data.pp_train, config.data.pp_eval, params["augmentation"])
  return config


def augmented(pp_train: str, pp_eval: str, strength: float) -> str:
  """`pp_train` with pad-and-crop by `strength` times a quarter of the side (from pp_eval's resize); an
  Inception-crop recipe keeps its own crop."""
  if "inception_crop" in pp_train:
    return pp_train
  side = re.search(r"resize\((\d+)", pp_eval)
  pad = round(strength * int(side.group(1)) / 4) if side else 0
  ops = [op for op in pp_train.split("|") if not op.startswith("pad_and_crop")]
  if pad:
    ops.insert(1 if ops and ops[0].startswith("resize") else 0, f"pad_and_crop({pad})")
  return "|".join(ops)


class Pruning(hooks.Hook):
  """Reports each evaluation's accuracy to the trial and stops the run when the pruner says so."""

  def __init__(self, trial: optuna.Trial):
    self.trial, self.pruned = trial, False

  def __call__(self, ctx: hooks.Context) -> None:
    if not ctx.evaluated or ctx.is_last or "accuracy" not in ctx.eval_metrics:
      return  # Also when only evaluators other than the accuracy's were due at this step.
    self.trial.report(ctx.eval_metrics["accuracy"], ctx.step)
    if self.trial.should_prune():
      self.pruned, ctx.stop_reason = True, "pruned"


def trial_objective(
  config: ml_collections.ConfigDict, space: ml_collections.ConfigDict, workdir: str, *, deadline: float
) -> Callable[[optuna.Trial], float | None]:
  """The objective of a trial: train `config` at the sampled point in `workdir/trial_<n>`, report and prune; its
  final validation accuracy, or None if the deadline stopped it."""

  def objective(trial: optuna.Trial) -> float | None:
    params = sample(trial, space)
    run_dir = os.path.join(workdir, f"trial_{trial.number:03d}")
    trial.set_user_attr("workdir", run_dir)
    pruning = Pruning(trial)
    results = runs.train(
      apply(config, params, evals=space.evals_per_trial), run_dir, more_hooks=(pruning, runs.Deadline(deadline))
    )
    if pruning.pruned:
      raise optuna.TrialPruned()
    return results["accuracy"] if results["finished"] else None

  return objective
