"""Which model to tune: candidates sized to the budget and the data, each one's training pace measured over its
first steps (a candidate that cannot finish its short run in its share of the stage stops there), then the short
runs' validation accuracy against their throughput; the choice is the most accurate model on the accuracy/speed
Pareto front, the fastest one is the student that deployment distils into."""

import os
import time
from typing import Any

import ml_collections

from vitjax.workflow import baseline, runs


def candidate_config(
  workflow: ml_collections.ConfigDict, base: ml_collections.ConfigDict, name: str
) -> ml_collections.ConfigDict:
  """The run config of candidate `name`: the base recipe with that model; the pretrained model (when --pretrained
  gave weights) at its own input size, the others from scratch."""
  config = base.copy_and_resolve_references()
  config.model.name = name
  if name == workflow.select.pretrained_model and base.pretrained.path:
    config.data.pp_train = config.data.pp_eval = workflow.select.pretrained_pp
  else:
    config.pretrained.path = None
  return config


def not_started(name: str) -> dict[str, Any]:
  """The record of a candidate the budget left no time for."""
  return {
    "model": name,
    "workdir": None,
    "val_accuracy": 0.0,
    "images_per_sec": 0.0,
    "step": 0,
    "finished": False,
    "stop_reason": "not started: budget",
  }


def candidates(workflow: ml_collections.ConfigDict, base: ml_collections.ConfigDict) -> list[str]:
  names = list(workflow.select.candidates)
  if base.pretrained.path and workflow.select.pretrained_model not in names:
    names.append(workflow.select.pretrained_model)
  return names


def pareto(rows: list[dict[str, Any]]) -> list[str]:
  """Names of the rows no other row beats on both validation accuracy and images per second."""
  return [
    r["model"]
    for r in rows
    if not any(
      o["val_accuracy"] >= r["val_accuracy"]
      and o["images_per_sec"] >= r["images_per_sec"]
      and (o["val_accuracy"], o["images_per_sec"]) != (r["val_accuracy"], r["images_per_sec"])
      for o in rows
    )
  ]


def run(workflow: ml_collections.ConfigDict, base: ml_collections.ConfigDict, workdir: str, *, deadline: float):
  """Short runs of every candidate, the Pareto front, the choice and why. A candidate is not started when the time
  left is less than the slowest start (set-up and compile) seen so far: it could not take one step."""
  names, rows, start_cost = candidates(workflow, base), [], 0.0
  for index, name in enumerate(names):
    left = deadline - time.time()
    if rows and left < start_cost:
      rows.append(not_started(name))
      continue
    config = runs.with_steps(candidate_config(workflow, base, name), workflow.select.epochs)
    run_dir, started = os.path.join(workdir, name), time.time()
    hook = runs.Deadline(started + left / (len(names) - index), probe_steps=workflow.select.probe_steps)
    rows.append(baseline.run_record(name, run_dir, runs.train(config, run_dir, more_hooks=(hook,))))
    start_cost = max(start_cost, (hook.first_step_at or time.time()) - started)
  finished = [r for r in rows if r["finished"]] or [r for r in rows if r["workdir"]]
  front = pareto(finished)
  chosen = max((r for r in finished if r["model"] in front), key=lambda r: (r["val_accuracy"], r["images_per_sec"]))
  fastest = max(finished, key=lambda r: r["images_per_sec"])
  skipped = [f"{r['model']} ({r['stop_reason']})" for r in rows if not r["finished"]]
  reason = (
    f"{chosen['model']}: the best validation accuracy ({chosen['val_accuracy']:.4f}) on the accuracy/speed Pareto "
    f"front ({', '.join(front)}) at {chosen['images_per_sec']:.0f} training images/s; the fastest, "
    f"{fastest['model']} ({fastest['images_per_sec']:.0f} images/s), is the deployment student"
    + (f"; not finished: {', '.join(skipped)}" if skipped else "")
    + "."
  )
  return {"candidates": rows, "pareto": front, "chosen": chosen["model"], "fastest": fastest["model"], "why": reason}
