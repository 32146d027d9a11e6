"""The stages in order, each skipped when the state file says it finished: split, baseline, select, tune,
ensemble, deploy, report. A progress line per stage gives the time spent and the ETA against the budget."""

import os
import time
import uuid
from typing import Any

import ml_collections
from absl import logging

from vitjax.workflow import baseline, deploy, ensemble, report, runs, select, split, state, tune
from vitjax.workflow import study as study_lib

STAGES = ("split", "baseline", "select", "tune", "ensemble", "deploy", "report")


def run(
  workflow: ml_collections.ConfigDict, images: str, workdir: str, *, storage: str = "", pretrained: str | None = None
) -> dict[str, Any]:
  """Runs (or continues) the workflow of `images` in `workdir`; the report's rows and the deployed run."""
  os.makedirs(workdir, exist_ok=True)
  shares = {k: float(workflow.shares[k]) for k in STAGES if k in workflow.shares}  # In the order they run.
  record = state.State(workdir, budget=state.parse_budget(workflow.budget), shares=shares)
  record.record.setdefault("worker", uuid.uuid4().hex)  # This workdir's name in a shared Optuna study.
  record.save()
  root = os.path.join(workdir, "data")
  for stage in STAGES:
    if record.done(stage):
      continue
    start, deadline = time.time(), record.deadline(stage)
    result = _stage(stage, workflow, images, workdir, root, record, storage, pretrained, deadline=deadline)
    line = record.finish(stage, result, seconds=time.time() - start)
    logging.info(line)
    print(line, flush=True)
  return record.result("report")


def _stage(stage, workflow, images, workdir, root, record, storage, pretrained, *, deadline) -> Any:
  """One stage's work; its JSON result."""
  if stage == "split":
    options = workflow.split
    return split.split_folder(
      images,
      root,
      fractions=dict(options.fractions),
      seed=workflow.seed,
      imbalance_threshold=options.imbalance_threshold,
    )
  done = {s: record.result(s) for s in STAGES if record.done(s)}
  if done["split"]["imbalanced"]:
    logging.info("Training classes are imbalanced (ratio %s): the focal loss trains.", done["split"]["imbalance_ratio"])
  base = runs.base_config(workflow, root, focal=done["split"]["imbalanced"], pretrained=pretrained)
  stage_dir = os.path.join(workdir, stage)
  if stage == "baseline":
    return baseline.run(workflow, base, stage_dir, deadline=deadline)
  if stage == "select":
    return select.run(workflow, base, stage_dir, deadline=deadline)
  if stage == "tune":
    return _tune(workflow, base, stage_dir, record, storage, done["select"], deadline=deadline)
  chosen = select.candidate_config(workflow, base, done["tune"].get("model", done["select"]["chosen"]))
  best = done["tune"]["best"]
  if stage == "ensemble":
    return ensemble.run(workflow, chosen, best, stage_dir, deadline=deadline)
  if stage == "deploy":
    student = select.candidate_config(workflow, base, _student(workflow, base, done["select"], chosen))
    teacher_dir = done["ensemble"]["teacher"]
    return deploy.run(workflow, student, chosen, best["params"], teacher_dir, stage_dir, deadline=deadline)
  return report.write(done, root, workdir, workflow.report)


def _student(workflow, base, selected: dict[str, Any], chosen: ml_collections.ConfigDict) -> str:
  """The fastest finished candidate that reads the teacher's input: the teacher sees the student's images."""
  rows = [r for r in selected["candidates"] if r["finished"]]
  fits = [r for r in rows if select.candidate_config(workflow, base, r["model"]).data.pp_eval == chosen.data.pp_eval]
  return max(fits, key=lambda r: r["images_per_sec"])["model"] if fits else chosen.model.name


def _tune(workflow, base, workdir, record, storage, selected, *, deadline) -> dict[str, Any]:
  """The study's trials; without a finished one (the budget ran out), the chosen candidate's run stands in. The
  study keeps the model it tunes: a worker joining from another machine tunes that one, whatever it selected."""
  options = workflow.tune
  os.makedirs(workdir, exist_ok=True)
  url = study_lib.storage_url(storage or options.storage, workdir)
  study = study_lib.open_study(options.study, url, seed=workflow.seed, startup_trials=options.startup_trials)
  model = study.user_attrs.get("model") or selected["chosen"]
  study.set_user_attr("model", model)
  config = select.candidate_config(workflow, base, model)
  objective = tune.trial_objective(config, options, workdir, deadline=deadline)
  study_lib.optimize(study, objective, trials=options.trials, worker=record.record["worker"], deadline=deadline)
  trials = study_lib.summary(study)
  if any(t["state"] == "COMPLETE" for t in trials):
    return {"model": model, "best": study_lib.best(study), "trials": trials}
  chosen = next(r for r in selected["candidates"] if r["model"] == model)
  defaults = {
    "learning_rate": config.optimizer.learning_rate,
    "weight_decay": config.optimizer.weight_decay,
    "label_smoothing": config.loss.label_smoothing,
    "augmentation": 0.5,
    "epochs": workflow.select.epochs,
  }
  logging.warning("No tuning trial finished within the budget: the chosen candidate's run and recipe stand in.")
  return {
    "model": model,
    "best": {"number": None, "accuracy": chosen["val_accuracy"], "params": defaults, "workdir": chosen["workdir"]},
    "trials": trials,
  }
