"""The training recipe: data, model and optimizer from a config, then train, evaluate and checkpoint."""

import datetime
import functools
import json
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview
from jax.experimental import multihost_utils

from vitjax import checkpoints, data, history, losses, models, optim, sharding, steps


def validate(config: ml_collections.ConfigDict) -> None:
  """Cheap checks that fail before any data is read or anything compiled, each naming the bad value."""
  models.build(config.model.name, num_classes=1, **model_overrides(config))
  sharding.check_batch_size(config.batch_size)
  sharding.check_batch_size(config.eval_batch_size, name="eval_batch_size")
  losses.get(config.loss.name)
  data.get_builder(config.data)
  for key in ("pp_train", "pp_eval"):
    data.preprocess.parse(config.data[key])


def model_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
  overrides = config.model.to_dict()
  overrides.pop("name")
  if "dtype" in overrides:
    overrides["dtype"] = jnp.dtype(overrides["dtype"])
  return overrides


def loss_function(config: ml_collections.ConfigDict):
  kwargs = config.loss.to_dict()
  return functools.partial(losses.get(kwargs.pop("name")), **kwargs)


def prepare_dataset(config: ml_collections.ConfigDict):
  """The dataset's builder, prepared by the first process first so that processes sharing a disk don't race."""
  builder = data.get_builder(config.data)
  if jax.process_index() == 0:
    data.prepare(builder)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("dataset prepared")
    data.prepare(builder)
  return builder


def total_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  if config.get("total_steps"):
    return config.total_steps
  return math.ceil(config.num_epochs * num_train_examples / config.batch_size)


def create_train_state(model, tx, rng: jax.Array, *, image_shape: tuple[int, ...]) -> steps.TrainState:
  variables = model.init({"params": rng, "dropout": rng}, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return steps.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                 batch_stats=variables.get("batch_stats", {}))


def evaluate(eval_step, state, dataset, batch_sharding) -> dict[str, float]:
  """Metrics over one pass of ``dataset``, every example counted once (padding is masked out)."""
  total = None
  for batch in data.as_numpy(dataset):
    batch_metrics = eval_step(state, sharding.to_global(batch, batch_sharding))
    total = batch_metrics if total is None else total.merge(batch_metrics)
  results = {name: float(value) for name, value in total.compute().items()}
  results["num_examples"] = int(total.loss.count)
  return results


class _Preemption:
  """Turns SIGTERM into a flag the loop checks, so a preempted job saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:  # Every process must stop at the same step.
      return bool(multihost_utils.process_allgather(np.array(self.requested)).any())
    return self.requested

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _progress_line(step: int, total: int, *, steps_per_sec: float, images_per_sec: float, started: float) -> str:
  eta = datetime.timedelta(seconds=round((total - step) / max(steps_per_sec, 1e-9)))
  elapsed = datetime.timedelta(seconds=round(time.time() - started))
  return (f"step {step}/{total} ({100 * step / total:.0f}%) | {steps_per_sec:.1f} steps/s | "
          f"{images_per_sec:.0f} img/s | elapsed {elapsed} | ETA {eta}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming from its checkpoints) and returns the final eval metrics."""
  validate(config)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
  history_path = os.path.join(workdir, "metrics.jsonl")

  builder = prepare_dataset(config)
  num_classes = data.num_classes(builder)
  num_train = data.num_examples(builder, config.data.train_split)
  num_steps = total_steps(config, num_train)
  local_batch = config.batch_size // jax.process_count()

  mesh = sharding.make_mesh()
  batch_sharding = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)
  model = models.build(config.model.name, num_classes=num_classes, **model_overrides(config))
  tx, learning_rate_fn = optim.create_optimizer(config, total_steps=num_steps)
  eval_ds = data.eval_dataset(builder, config.data, batch_size=config.eval_batch_size // jax.process_count(),
                              process_index=jax.process_index(), process_count=jax.process_count())
  image_shape = tuple(eval_ds.element_spec["image"].shape[1:])

  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  init = functools.partial(create_train_state, model, tx, image_shape=image_shape)
  abstract_state = jax.eval_shape(init, init_rng)
  state_sharding = jax.tree.map(lambda _: replicated, abstract_state)
  if is_main:
    logging.info("Model %s, %d classes, %d steps of %d images.\n%s", config.model.name, num_classes, num_steps,
                 config.batch_size, parameter_overview.get_parameter_overview(abstract_state.params,
                                                                              include_stats=False))

  manager = checkpoints.create_manager(workdir, max_to_keep=config.keep_checkpoints)
  restored = checkpoints.restore_latest(
      manager, jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            abstract_state, state_sharding))
  if restored:
    state, meta = restored
    logging.info("Resumed from step %d in %s.", int(state.step), workdir)
  else:
    state = jax.jit(init, out_shardings=state_sharding)(init_rng)
    meta = {"train_seconds": 0.0}
  start_step = int(state.step)
  if is_main:
    history.truncate(history_path, after_step=start_step)

  loss_fn = loss_function(config)
  train_step = jax.jit(steps.make_train_step(loss_fn=loss_fn, learning_rate_fn=learning_rate_fn),
                       in_shardings=(state_sharding, batch_sharding, replicated),
                       out_shardings=(state_sharding, replicated), donate_argnums=0)
  eval_step = jax.jit(steps.make_eval_step(loss_fn=loss_fn), in_shardings=(state_sharding, batch_sharding),
                      out_shardings=replicated)
  train_ds = data.train_dataset(builder, config.data, batch_size=local_batch, seed=config.seed,
                                start_batch=start_step, process_index=jax.process_index(),
                                process_count=jax.process_count())
  batches = sharding.prefetch_to_device(data.as_numpy(train_ds), batch_sharding, size=config.data.prefetch)

  def save(step: int) -> None:
    checkpoints.save(manager, state, step=step,
                     meta={"train_seconds": train_seconds, "input_batches": step, "config": config.get("name")})

  preemption = _Preemption()
  train_seconds = meta["train_seconds"]
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  interval_start, interval_wait, run_start = time.perf_counter(), 0.0, time.time()
  step = start_step
  eval_metrics = None
  try:
    while step < num_steps:
      fetch_start = time.perf_counter()
      batch = next(batches)
      interval_wait += time.perf_counter() - fetch_start
      state, step_metrics = train_step(state, batch, train_rng)
      step += 1
      pending.append((step, step_metrics))
      is_last = step == num_steps
      stopping = preemption.reached(step) if step % config.log_every == 0 or is_last else False
      eval_due = step % config.eval_every == 0 or is_last
      checkpoint_due = step % config.checkpoint_every == 0 or is_last or stopping
      if step % config.log_every == 0 or eval_due or checkpoint_due:
        host_metrics = [(s, jax.device_get(m)) for s, m in pending]
        pending = []
        for s, m in host_metrics:
          if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
            raise FloatingPointError(
                f"Non-finite loss ({m['loss']}) or gradient norm ({m['grad_norm']}) at step {s}; the last good "
                f"checkpoint is step {manager.latest_step()}. Lower the learning rate or enable grad clipping.")
        elapsed = time.perf_counter() - interval_start
        train_seconds += elapsed
        summary = {k: float(np.mean([m[k] for _, m in host_metrics])) for k in host_metrics[0][1]}
        steps_per_sec = len(host_metrics) / elapsed
        summary.update(steps_per_sec=steps_per_sec,
                       images_per_sec_per_device=steps_per_sec * config.batch_size / jax.device_count(),
                       input_wait_fraction=interval_wait / elapsed)
        writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
        if is_main:
          history.append(history_path, {"step": step, "split": "train", **summary})
          logging.info(_progress_line(step, num_steps, steps_per_sec=steps_per_sec,
                                      images_per_sec=steps_per_sec * config.batch_size, started=run_start))
        if eval_due:
          eval_metrics = evaluate(eval_step, state, eval_ds, batch_sharding)
          writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
          if is_main:
            history.append(history_path, {"step": step, "split": "eval", **eval_metrics})
        if checkpoint_due:
          save(step)
        writer.flush()
        interval_start, interval_wait = time.perf_counter(), 0.0
      if stopping:
        logging.warning("Stopped at step %d after SIGTERM; re-run the same command to resume.", step)
        break
  finally:
    manager.wait_until_finished()
    preemption.restore()

  if eval_metrics is None:  # Nothing left to train: report the restored state.
    eval_metrics = evaluate(eval_step, state, eval_ds, batch_sharding)
  results = {"config": config.get("name"), "model": config.model.name, "dataset": config.data.dataset,
             "split": config.data.eval_split, "step": step, "train_seconds": round(train_seconds, 2),
             "finished": step >= num_steps, **eval_metrics}
  if is_main:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    history.plot(history.read(history_path), os.path.join(workdir, "curves.png"),
                 title=f"{config.get('name')}: {config.model.name} on {config.data.dataset}")
  writer.close()
  return results
