"""The best configuration retrained with more seeds, its members' logits averaged: single against ensemble
accuracy on the validation split. The best trial's own run is the first member (its seed is the workflow's)."""

import os

import ml_collections
import numpy as np

from vitjax.workflow import baseline, runs, tune


def run(
  workflow: ml_collections.ConfigDict, config: ml_collections.ConfigDict, best: dict, workdir: str, *, deadline: float
):
  """Trains the missing members, then scores each member and their average on the validation split."""
  members = [{"seed": config.seed, "workdir": best["workdir"], "val_accuracy": best["accuracy"]}]
  tuned = tune.apply(config, best["params"], evals=2)
  for seed in range(config.seed + 1, config.seed + workflow.ensemble.seeds):
    member = tuned.copy_and_resolve_references()
    member.seed = seed
    run_dir = os.path.join(workdir, f"seed_{seed}")
    record = baseline.run_record(
      config.model.name, run_dir, runs.train(member, run_dir, more_hooks=(runs.Deadline(deadline),))
    )
    members.append({"seed": seed, "workdir": run_dir, "val_accuracy": record["val_accuracy"]})
  scored = runs.logits(tuned, [m["workdir"] for m in members], "val")
  accuracy = float(np.mean(scored["logits"].argmax(axis=1) == scored["labels"]))
  return {
    "members": members,
    "val_accuracy": accuracy,
    "single_val_accuracy": float(np.mean([m["val_accuracy"] for m in members])),
    "teacher": ",".join(m["workdir"] for m in members),  # The averaged ensemble, as config.distill.checkpoint.
  }
