"""An Optuna study that several workers share: TPE sampling, median pruning, trials continued after a kill.

The study lives in an RDB (SQLite in the workdir by default, any URL Optuna takes), so workers on several machines
join one study. Each worker has a name; a rerun of a killed worker takes up its own trials left running (a trial
is an ordinary run directory, so it resumes from its last checkpoint) before it asks for new ones. Finished trials
are never redone.
"""

import os
import time
from collections.abc import Callable
from typing import Any

import optuna

WORKER_ATTR = "worker"


def storage_url(storage: str, workdir: str) -> str:
  return storage or f"sqlite:///{os.path.abspath(os.path.join(workdir, 'study.db'))}"


def open_study(name: str, storage: str, *, seed: int, startup_trials: int) -> optuna.Study:
  """The study `name` in `storage`, created by the first worker and loaded by the others."""
  engine = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}
  return optuna.create_study(
    study_name=name,
    storage=optuna.storages.RDBStorage(storage, engine_kwargs=engine),
    direction="maximize",
    sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials),
    pruner=optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0),
    load_if_exists=True,
  )


def optimize(
  study: optuna.Study, objective: Callable[[optuna.Trial], float], *, trials: int, worker: str, deadline: float
) -> None:
  """Runs trials until the study holds `trials` of them or `deadline` passes: first this worker's own trials left
  running by a kill (continued, not redrawn), then new ones. `objective` raises `optuna.TrialPruned` to prune."""
  while time.time() < deadline:
    own = [
      t
      for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
      if t.user_attrs.get(WORKER_ATTR) == worker
    ]
    if own:
      trial = optuna.Trial(study, own[0]._trial_id)
    elif len(study.get_trials(deepcopy=False)) < trials:
      trial = study.ask()
      trial.set_user_attr(WORKER_ATTR, worker)
    else:
      return
    try:
      value = objective(trial)
    except optuna.TrialPruned:
      study.tell(trial, state=optuna.trial.TrialState.PRUNED)
      continue
    except FloatingPointError:  # The loss diverged (a NonFiniteLossError): a failed point, the search goes on.
      study.tell(trial, state=optuna.trial.TrialState.FAIL)
      continue
    if value is None:  # Stopped by the deadline: left running, so that a rerun continues it.
      return
    study.tell(trial, value)


def best(study: optuna.Study) -> dict[str, Any]:
  """The best finished trial: its number, validation accuracy, parameters and run directory."""
  trial = study.best_trial
  return {
    "number": trial.number,
    "accuracy": trial.value,
    "params": trial.params,
    "workdir": trial.user_attrs["workdir"],
  }


def summary(study: optuna.Study) -> list[dict[str, Any]]:
  """Every trial of the study: number, state, value, parameters, worker."""
  return [
    {"number": t.number, "state": t.state.name, "accuracy": t.value, "params": t.params, **t.user_attrs}
    for t in study.get_trials(deepcopy=False)
  ]
