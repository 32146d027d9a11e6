"""The workflow's training runs: one config per run built from the run config file, trained by the train loop
(`train_and_evaluate`, the recipe of ``--mode=train``), and scored by the eval mode's logits.

Every run is an ordinary run directory: ``python -m vitjax.main --mode=eval|explain`` and ``vitjax.predict`` read it.
"""

import importlib.util
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from vitjax import configs, data, models, sharding, transfer
from vitjax.errors import ConfigError
from vitjax.evaluate import report
from vitjax.train import history, hooks, loop


def load_config_file(path: str, arg: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file, found as given, under the repository or in the package (`configs.find`)."""
  found = configs.find(path)
  if found is None:
    raise ConfigError(f"config.run_config={path!r} is not a file; name a config such as configs/folder.py.")
  spec = importlib.util.spec_from_file_location(f"workflow_run_config_{abs(hash(found))}", found)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(
      f"config.run_config={path!r} defines no get_config(arg); name a config such as configs/folder.py."
    )
  return module.get_config(arg)


def base_config(workflow: ml_collections.ConfigDict, root: str, *, focal: bool, pretrained: str | None):
  """The run config of the split folder `root`: trains on `train`, evaluates on `val` (test waits for the report)."""
  config = load_config_file(workflow.run_config, f"{root},runlocal" if workflow.runlocal else root)
  config.data.train_split, config.data.eval_split = "train", "val"
  config.seed = workflow.seed
  if focal:
    config.loss.name = "focal"
  if pretrained:
    config.pretrained.path = pretrained
  return config


def with_steps(config: ml_collections.ConfigDict, epochs: float, *, evals: int = 2) -> ml_collections.ConfigDict:
  """`config` for `epochs` over its training split, in whole steps, evaluated `evals` times."""
  config = config.copy_and_resolve_references()
  source = data.from_config(config.data)
  steps = max(math.ceil(epochs * data.num_examples(source, config.data.train_split) / config.batch_size), 2)
  config.total_steps = steps
  config.eval_every = max(steps // evals, 1)
  config.log_every = max(min(config.log_every, steps // 4), 1)
  config.checkpoint_every = config.eval_every
  config.schedule.warmup_steps = min(config.schedule.warmup_steps, steps // 10)
  return config


class Deadline(hooks.Hook):
  """Stops a run at a wall-clock time (its checkpoint is saved, so rerunning continues it), and, `probe_steps`
  after the first step, when its measured pace cannot finish before that time."""

  def __init__(self, deadline: float, *, probe_steps: int = 0):
    self.deadline, self.probe_steps = deadline, probe_steps
    self._first: tuple[int, float] | None = None
    self.pace: float | None = None  # Seconds per step, once measured.

  @property
  def first_step_at(self) -> float | None:
    """When the run's first step (which compiles) ended, if it ran."""
    return self._first[1] if self._first else None

  def __call__(self, ctx: hooks.Context) -> None:
    now = time.time()
    if self._first is None:
      self._first = (ctx.step, now)  # The first step compiled: the pace counts from here.
    elif self.pace is None and self.probe_steps and ctx.step - self._first[0] >= self.probe_steps:
      jax.block_until_ready(ctx.state.step)
      self.pace = (time.time() - self._first[1]) / (ctx.step - self._first[0])
      if now + self.pace * (ctx.num_steps - ctx.step) > self.deadline:
        ctx.stop_reason = "too slow for the budget"
    if now > self.deadline and ctx.stop_reason is None:
      ctx.stop_reason = "budget"


class Preempted(Exception):
  """A run stopped on SIGTERM (its checkpoint saved): the workflow stops too, recording nothing as finished."""


def train(config: ml_collections.ConfigDict, workdir: str, *, more_hooks: tuple[hooks.Hook, ...] = ()):
  """Trains (or resumes) one run; its results dict as the train loop returns it."""
  results = loop.train_and_evaluate(config, workdir, more_hooks=more_hooks)
  if results["stop_reason"] == "SIGTERM":
    raise Preempted(f"SIGTERM: {workdir} saved its checkpoint; rerun the same command to continue.")
  return results


def images_per_sec(workdir: str) -> float:
  """Training throughput: the median of the train records after the first (which includes the compile)."""
  rates = [r["images_per_sec"] for r in history.read(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"]
  return float(np.median(rates[1:] if len(rates) > 1 else rates)) if rates else 0.0


def count_params(config: ml_collections.ConfigDict, num_classes: int, image_shape: tuple[int, ...]) -> int:
  model = models.from_config(config.model, num_classes=num_classes)
  shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), image_shape=image_shape))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"])))


def logits(config: ml_collections.ConfigDict, workdirs: list[str], split: str) -> dict[str, Any]:
  """Logits (averaged over `workdirs`: an ensemble), labels and parameter count of the runs' model on `split`,
  through the eval mode's own functions."""
  source = data.from_config(config.data)
  data.prepare(source)
  view = config.data.copy_and_resolve_references()
  view.eval_split = split
  eval_ds = data.eval_dataset(source, view, batch_size=config.eval_batch_size, split=split)
  num_classes = data.num_classes(source)
  model = models.from_config(config.model, num_classes=num_classes)
  image_shape = tuple(eval_ds.element_spec["image"].shape[1:])
  abstract = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), image_shape=image_shape))
  logits_fn, mesh, total = report.make_logits_fn(model), sharding.mesh_from_config(config), 0.0
  for workdir in workdirs:  # An ensemble averages its members' logits, as --mode=eval does.
    variables, _ = transfer.load_variables(workdir, abstract)
    member, targets = report.collect_logits(logits_fn, variables, data.as_numpy(eval_ds), mesh)
    total = total + member
  values = total / len(workdirs)
  return {
    "logits": values,
    "labels": targets.argmax(axis=1),
    "params": count_params(config, num_classes, image_shape),
    "class_names": data.class_names(source),
  }
