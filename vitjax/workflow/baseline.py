"""The floor every later stage must beat: the best classical pair of a small grid (``--mode=baseline``) and a small
network trained from scratch with the run config's own recipe."""

import os
from typing import Any

import ml_collections

from vitjax import classical
from vitjax.workflow import runs


def run(workflow: ml_collections.ConfigDict, base: ml_collections.ConfigDict, workdir: str, *, deadline: float):
  """Both baselines on the validation split; their directories and scores."""
  options = workflow.baseline
  config = base.copy_and_resolve_references()
  config.baseline.features, config.baseline.classifiers = tuple(options.features), tuple(options.classifiers)
  config.baseline.search = options.search
  classical_dir = os.path.join(workdir, "classical")
  table = classical.run_baseline(config, classical_dir)
  scratch = runs.with_steps(base, options.epochs)
  scratch.model.name = options.model
  scratch.pretrained.path = None  # From scratch: --pretrained weights are the pretrained candidate's.
  scratch_dir = os.path.join(workdir, "scratch")
  results = runs.train(scratch, scratch_dir, more_hooks=(runs.Deadline(deadline),))
  return {
    "classical": {**table["best"], "val_accuracy": table["best"]["accuracy"], "workdir": classical_dir},
    "scratch": run_record(options.model, scratch_dir, results),
  }


def run_record(name: str, workdir: str, results: dict[str, Any]) -> dict[str, Any]:
  """What the report keeps of a training run."""
  return {
    "model": name,
    "workdir": workdir,
    "val_accuracy": results["accuracy"],
    "images_per_sec": runs.images_per_sec(workdir),
    "step": results["step"],
    "finished": results["finished"],
    "stop_reason": results["stop_reason"],
  }
