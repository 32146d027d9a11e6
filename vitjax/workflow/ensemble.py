"""The best configuration retrained with more seeds, its members' logits averaged: single against ensemble
accuracy on the validation split. The best trial's own run is the first member (its seed is the workflow's)."""

import os
import time

import ml_collections
import numpy as np

from vitjax.workflow import baseline, runs, tune


def run(
  workflow: ml_collections.ConfigDict, config: ml_collections.ConfigDict, best: dict, workdir: str, *, deadline: float
):
  """Trains the missing members, then scores each member and their average on the validation split. A member the
  budget stopped early is left out of the average (it would pull it down); one is not started when the time left
  is less than the previous member's start (set-up and compile)."""
  members = [{"seed": config.seed, "workdir": best["workdir"], "val_accuracy": best["accuracy"], "finished": True}]
  tuned, start_cost = tune.apply(config, best["params"], evals=2), 0.0
  for seed in range(config.seed + 1, config.seed + workflow.ensemble.seeds):
    if deadline - time.time() < start_cost:
      break
    member = tuned.copy_and_resolve_references()
    member.seed = seed
    run_dir, started, hook = os.path.join(workdir, f"seed_{seed}"), time.time(), runs.Deadline(deadline)
    record = baseline.run_record(config.model.name, run_dir, runs.train(member, run_dir, more_hooks=(hook,)))
    start_cost = (hook.first_step_at or time.time()) - started
    members.append({"seed": seed, "workdir": run_dir, "val_accuracy": record["val_accuracy"], **_finished(record)})
  kept = [m for m in members if m["finished"]]
  scored = runs.logits(tuned, [m["workdir"] for m in kept], "val")
  return {
    "members": kept,
    "left_out": [m for m in members if not m["finished"]],
    "val_accuracy": float(np.mean(scored["logits"].argmax(axis=1) == scored["labels"])),
    "single_val_accuracy": float(np.mean([m["val_accuracy"] for m in kept])),
    "teacher": ",".join(m["workdir"] for m in kept),  # The averaged ensemble, as config.distill.checkpoint.
  }


def _finished(record: dict) -> dict:
  return {"finished": record["finished"], "stop_reason": record["stop_reason"]}
