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
from clu import metric_writers
from jax.experimental import multihost_utils

from vitjax import checkpoints, data, distill, evaluators, history, losses, models, optim, sharding, steps

# Steps dispatched ahead of the host: enough to hide dispatch latency. Unbounded run-ahead also starves XLA's CPU
# collectives on simulated multi-device hosts (all-reduce rendezvous timeouts).
MAX_STEPS_IN_FLIGHT = 2


def validate(config: ml_collections.ConfigDict) -> None:
  """Cheap checks that fail before any data is read or anything compiled, each naming the bad value."""
  models.build(config.model.name, num_classes=1, **model_overrides(config))
  sharding.check_batch_size(config.batch_size)
  sharding.check_batch_size(config.eval_batch_size, name="eval_batch_size")
  if config.batch_size % (jax.device_count() * config.accum_steps):
    raise ValueError(
      f"config.batch_size={config.batch_size} must split into config.accum_steps="
      f"{config.accum_steps} microbatches that each divide over {jax.device_count()} devices."
    )
  sharding.make_mesh(fsdp=config.mesh.fsdp)
  if config.parallelism not in sharding.PARALLELISM:
    raise ValueError(f"Unknown parallelism {config.parallelism!r}; choose one of: {', '.join(sharding.PARALLELISM)}.")
  losses.get(config.loss.name)
  if config.distill.checkpoint and config.parallelism != "jit":
    raise ValueError("config.distill needs config.parallelism='jit'.")
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


def init_variables(model, rng: jax.Array, *, image_shape: tuple[int, ...]) -> dict[str, Any]:
  return model.init({"params": rng, "dropout": rng}, jnp.zeros((1, *image_shape), jnp.float32), train=False)


def create_train_state(
  model, tx, rng: jax.Array, *, image_shape: tuple[int, ...], ema: bool = False
) -> steps.TrainState:
  variables = init_variables(model, rng, image_shape=image_shape)
  return steps.TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    tx=tx,
    batch_stats=variables.get("batch_stats", {}),
    ema_params=variables["params"] if ema else None,
  )


def load_pretrained(config: ml_collections.ConfigDict, state: steps.TrainState) -> steps.TrainState:
  """Replaces the initial parameters (and their average) with those of ``config.pretrained.path``."""
  from vitjax import pretrained  # Imported on use: only fine-tuning runs need the public-checkpoint importer.

  shardings = jax.tree.map(lambda x: x.sharding, state.params)
  params = pretrained.load_pretrained(
    config.pretrained.path,
    jax.device_get(state.params),
    dont_load=tuple(config.pretrained.dont_load),
    head_bias_init=config.pretrained.head_bias_init,
    keep_pre_logits=config.pretrained.keep_pre_logits,
  )
  params = jax.device_put(params, shardings)
  return state.replace(params=params, ema_params=params if state.ema_params is not None else None)


def evaluate(eval_step, state, dataset, place_batch, host) -> dict[str, float]:
  """Metrics over one pass of ``dataset``, every example counted once (padding is masked out)."""
  total = None
  for batch in data.as_numpy(dataset):
    batch_metrics = host(eval_step(state, place_batch(batch)))
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

  def reached(self) -> bool:
    if jax.process_count() > 1:  # Every process must stop at the same step.
      return bool(multihost_utils.process_allgather(np.array(self.requested)).any())
    return self.requested

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


class _EarlyStopping:
  """Counts evaluations since ``metric`` last improved; ``patience`` 0 never stops."""

  def __init__(self, config: ml_collections.ConfigDict, *, best: float | None = None, waited: int = 0):
    self.metric, self.patience, self.sign = config.metric, config.patience, 1 if config.mode == "max" else -1
    self.best, self.waited = best, waited

  def update(self, metrics: dict[str, float]) -> bool:
    """Records an evaluation; True when training should stop."""
    if self.metric not in metrics:
      raise ValueError(
        f"config.early_stopping.metric={self.metric!r} is not an eval metric; "
        f"choose one of: {', '.join(sorted(metrics))}."
      )
    value = metrics[self.metric]
    if self.best is None or self.sign * (value - self.best) > 0:
      self.best, self.waited = value, 0
    else:
      self.waited += 1
    return bool(self.patience) and self.waited >= self.patience


def _progress_line(step: int, total: int, *, steps_per_sec: float, images_per_sec: float, started: float) -> str:
  eta = datetime.timedelta(seconds=round((total - step) / max(steps_per_sec, 1e-9)))
  elapsed = datetime.timedelta(seconds=round(time.time() - started))
  return (
    f"step {step}/{total} ({100 * step / total:.0f}%) | {steps_per_sec:.1f} steps/s | "
    f"{images_per_sec:.0f} img/s | elapsed {elapsed} | ETA {eta}"
  )


def _check_finite(host_metrics: list[tuple[int, dict[str, np.ndarray]]], last_good: int | None) -> None:
  for step, m in host_metrics:
    if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
      raise FloatingPointError(
        f"Non-finite loss ({m['loss']}) or gradient norm ({m['grad_norm']}) at step {step}; the last good "
        f"checkpoint is step {last_good}. Lower the learning rate or clip gradients (optimizer.grad_clip_norm)."
      )


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
  if is_main:  # Beside the checkpoints, so that predictions can be read as names.
    with open(os.path.join(workdir, "class_names.json"), "w") as f:
      json.dump(data.class_names(builder), f)
  num_steps = total_steps(config, data.num_examples(builder, config.data.train_split))
  local_batch = config.batch_size // jax.process_count()
  model = models.build(config.model.name, num_classes=num_classes, **model_overrides(config))
  eval_ds = data.eval_dataset(
    builder,
    config.data,
    batch_size=config.eval_batch_size // jax.process_count(),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  image_shape = tuple(eval_ds.element_spec["image"].shape[1:])

  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  abstract_params = jax.eval_shape(functools.partial(init_variables, model, image_shape=image_shape), init_rng)[
    "params"
  ]
  tx, learning_rate_fn = optim.create_optimizer(config, total_steps=num_steps, params=abstract_params)
  init = functools.partial(create_train_state, model, tx, image_shape=image_shape, ema=config.ema_decay > 0)
  abstract_state = jax.eval_shape(init, init_rng)
  parallel = sharding.create(config.parallelism, sharding.make_mesh(fsdp=config.mesh.fsdp), abstract_state)
  if is_main:
    logging.info(
      "Model %s, %d classes, %.3f forward GFLOPs/image; %d steps of %d images on %d devices.\n%s",
      config.model.name,
      num_classes,
      models.forward_gflops(model, image_size=image_shape[0]),
      num_steps,
      config.batch_size,
      jax.device_count(),
      models.parameter_overview(abstract_params),
    )

  manager = checkpoints.create_manager(workdir, max_to_keep=config.keep_checkpoints)
  restored = checkpoints.restore_latest(manager, parallel.restore_target(abstract_state))
  if restored:
    state, meta = restored
    logging.info("Resumed from step %d in %s.", int(state.step), workdir)
  else:
    state = parallel.init(init, init_rng)
    if config.pretrained.path:
      state = load_pretrained(config, state)
    meta = {"train_seconds": 0.0}
  state = parallel.from_checkpoint(state)
  start_step = int(meta.get("step", 0))
  if is_main:
    history.truncate(history_path, after_step=start_step)

  loss_fn = loss_function(config)
  axis = sharding.PMAP_AXIS if config.parallelism == "pmap" else None
  train_loss_fn, teacher_fn = loss_fn, None
  if config.distill.checkpoint:
    teacher_fn = distill.teacher_from_config(
      config.distill, num_classes=num_classes, image_shape=image_shape, sharding=parallel.replicated
    )
    train_loss_fn = distill.make_loss_fn(config.distill, loss_fn)
  train_step = parallel.train_step(
    steps.make_train_step(
      loss_fn=train_loss_fn,
      learning_rate_fn=learning_rate_fn,
      accum_steps=config.accum_steps,
      ema_decay=config.ema_decay,
      axis_name=axis,
      teacher_fn=teacher_fn,
    )
  )
  eval_steps = {"": parallel.eval_step(steps.make_eval_step(loss_fn=loss_fn, axis_name=axis))}
  if config.ema_decay:
    eval_steps["ema_"] = parallel.eval_step(steps.make_eval_step(loss_fn=loss_fn, use_ema=True, axis_name=axis))
  train_ds = data.train_dataset(
    builder,
    config.data,
    batch_size=local_batch,
    seed=config.seed,
    start_batch=start_step,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  batches = sharding.prefetch_to_device(data.as_numpy(train_ds), parallel.place_batch, size=config.data.prefetch)

  def run_eval() -> dict[str, float]:
    results = {}
    for prefix, eval_step in eval_steps.items():
      metrics = evaluate(eval_step, state, eval_ds, parallel.place_batch, parallel.host_metrics)
      results.update({prefix + k: v for k, v in metrics.items()})
    return results

  def run_feature_evaluators() -> dict[str, float]:
    """Few-shot ridge probes and k-NN on the pre-logits features of the current parameters."""
    ev = config.evaluators
    probe_ds = data.eval_dataset(
      builder,
      config.data,
      split=ev.train_split or config.data.train_split,
      batch_size=config.eval_batch_size // jax.process_count(),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    current = parallel.to_checkpoint(state)
    return evaluators.feature_metrics(
      model.apply,
      steps.variables(current.params, current.batch_stats),
      data.as_numpy(probe_ds),
      data.as_numpy(eval_ds),
      shots=tuple(ev.shots),
      knn_k=ev.knn_k,
      l2_reg=ev.l2_reg,
      seed=config.seed,
      place_batch=functools.partial(sharding.to_global, sharding=parallel.batch),
    )

  preemption = _Preemption()
  early_stopping = _EarlyStopping(
    config.early_stopping, best=meta.get("best_metric"), waited=meta.get("evals_without_improvement", 0)
  )
  train_seconds = meta["train_seconds"]
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  interval_start, interval_wait, run_start = time.perf_counter(), 0.0, time.time()
  step, eval_metrics, stop_reason = start_step, None, None
  try:
    while step < num_steps and stop_reason is None:
      fetch_start = time.perf_counter()
      batch = next(batches)
      interval_wait += time.perf_counter() - fetch_start
      state, step_metrics = train_step(state, batch, train_rng)
      step += 1
      pending.append((step, step_metrics))
      if len(pending) > MAX_STEPS_IN_FLIGHT:  # Bounded run-ahead: the host never queues unboundedly many steps.
        jax.block_until_ready(pending[-MAX_STEPS_IN_FLIGHT - 1][1])
      is_last = step == num_steps
      log_due = step % config.log_every == 0 or is_last
      eval_due = step % config.eval_every == 0 or is_last
      checkpoint_due = step % config.checkpoint_every == 0 or is_last
      if log_due and preemption.reached():
        stop_reason, checkpoint_due = "SIGTERM", True
      if not (log_due or eval_due or checkpoint_due):
        continue
      host_metrics = list(zip([s for s, _ in pending], parallel.host_metrics([m for _, m in pending])))
      pending = []
      _check_finite(host_metrics, manager.latest_step())
      elapsed = time.perf_counter() - interval_start
      train_seconds += elapsed
      summary = {k: float(np.mean([m[k] for _, m in host_metrics])) for k in host_metrics[0][1]}
      steps_per_sec = len(host_metrics) / elapsed
      summary.update(
        steps_per_sec=steps_per_sec,
        images_per_sec_per_device=steps_per_sec * config.batch_size / jax.device_count(),
        input_wait_fraction=interval_wait / elapsed,
      )
      writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
      if is_main:
        history.append(history_path, {"step": step, "split": "train", **summary})
        logging.info(
          _progress_line(
            step,
            num_steps,
            steps_per_sec=steps_per_sec,
            images_per_sec=steps_per_sec * config.batch_size,
            started=run_start,
          )
        )
      if eval_due:
        eval_metrics = run_eval()
        if config.evaluators.every and (step % config.evaluators.every == 0 or is_last):
          eval_metrics.update(run_feature_evaluators())
        writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
        if is_main:
          history.append(history_path, {"step": step, "split": "eval", **eval_metrics})
        if early_stopping.update(eval_metrics):
          stop_reason, checkpoint_due = f"no eval/{early_stopping.metric} gain in {early_stopping.patience} evals", True
      if checkpoint_due:
        checkpoints.save(
          manager,
          parallel.to_checkpoint(state),
          step=step,
          meta={
            "step": step,
            "input_batches": step,
            "train_seconds": train_seconds,
            "config": config.get("name"),
            "best_metric": early_stopping.best,
            "evals_without_improvement": early_stopping.waited,
          },
        )
      writer.flush()
      interval_start, interval_wait = time.perf_counter(), 0.0
  finally:
    manager.wait_until_finished()
    preemption.restore()
  if stop_reason:
    logging.warning("Stopped at step %d (%s); re-running the same command resumes.", step, stop_reason)

  if eval_metrics is None:  # Nothing left to train: report the restored state.
    eval_metrics = run_eval()
  results = {
    "config": config.get("name"),
    "model": config.model.name,
    "dataset": config.data.dataset,
    "split": config.data.eval_split,
    "step": step,
    "train_seconds": round(train_seconds, 2),
    "finished": step >= num_steps,
    "stop_reason": stop_reason,
    **eval_metrics,
  }
  if is_main:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    history.plot(
      history.read(history_path),
      os.path.join(workdir, "curves.png"),
      title=f"{config.get('name')}: {config.model.name} on {config.data.dataset}",
    )
  writer.close()
  return results
