"""The training recipe: `train_and_evaluate(config, workdir)`, what `--mode=train` runs.

Each package builds its part from the config and checks it as it builds, so a bad value fails before anything
compiles; the loop then only steps and hands each step to its hooks (hooks.py).
"""

import functools
import json
import math
import os
import socket
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax
from absl import logging
from clu import metric_writers

from vitjax import checkpoints, data, losses, models, sharding, transfer
from vitjax.evaluate import plots, registry
from vitjax.train import history, hooks, mfu, objectives, optim, state, steps

# Offset of the target stream's seed from config.seed: its shuffle and augmentation differ from the source's.
TARGET_SEED = 7_919
PARAMS_FILE = "params.txt"  # The model's parameter table, in the workdir.


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, more_hooks: tuple[hooks.Hook, ...] = ()
) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its checkpoints) and returns the final eval metrics. `more_hooks`
  see every step after early stopping and before the checkpoint, so a stop they ask for is saved."""
  config = transfer.hub.configure(config)  # An `hf-hub:` pretrained.path names the model and its preprocessing.
  source, target = data.from_config(config.data), data.target_from_config(config.data)
  loss_fn = losses.from_config(config.loss)
  registry.check(config)
  mesh = sharding.mesh_from_config(config)
  for each_source in (source, target) if target else (source,):
    sharding.first_process_first(functools.partial(data.prepare, each_source))
  num_classes = data.num_classes(source)
  model = models.from_config(config.model, num_classes=num_classes)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    checkpoints.write_run_info(workdir, config, data.class_names(source))
  eval_ds = _eval_dataset(source, config)
  image_shape = tuple(eval_ds.element_spec["image"].shape[1:])
  num_steps = total_steps(config, data.num_examples(source, config.data.train_split))
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  setting = objectives.Setting(loss_fn, num_classes, image_shape, sharding.replicated(mesh), num_steps)
  objective = objectives.from_config(config, setting)
  manager = checkpoints.create_manager(workdir, max_to_keep=config.keep_checkpoints)
  train_state, parallel, learning_rate_fn, meta = _initial_state(
    config, manager, model, mesh, objective, image_shape=image_shape, num_steps=num_steps, rng=init_rng, workdir=workdir
  )
  train_step = _train_step(config, parallel, objective, learning_rate_fn)
  ctx = hooks.Context(num_steps=num_steps, meta=meta, step=meta.pop("step", 0), state=train_state)
  train_ds = _train_dataset(source, target, config, start_batch=ctx.step)
  flops = _flops_per_step(config, train_ds, train_step, train_state, parallel, train_rng)
  evals = _evaluators(config, model, source, target, loss_fn, mesh)
  weights = functools.partial(_weights, parallel)
  writer = _writer(workdir)
  run_hooks = _hooks(config, workdir, writer, manager, parallel, ctx, evals, weights, flops=flops, more=more_hooks)
  host = f"process {jax.process_index()} of {jax.process_count()}, host {socket.gethostname()}"
  ctx.input_counts["skipped"] = 0
  shards = source.files(
    config.data.train_split, index=jax.process_index(), count=jax.process_count(), drop_remainder=True
  )
  numpy_batches = data.as_numpy(train_ds, where=host, counts=ctx.input_counts, files=shards)
  batches = sharding.prefetch_to_device(numpy_batches, parallel.place_batch, size=config.data.prefetch)
  _run(train_step, run_hooks[0].timed(batches), train_rng, ctx, run_hooks)
  writer.close()
  return _finish(config, workdir, ctx, lambda train_state: registry.evaluate(evals, weights(train_state)))


def _run(train_step: Callable, batches, rng: jax.Array, ctx: hooks.Context, run_hooks: list[hooks.Hook]) -> None:
  """Steps until the last step or a hook's stop, handing every step to every hook; hooks close however it ends."""
  try:
    while ctx.step < ctx.num_steps and ctx.stop_reason is None:
      ctx.state, ctx.step_metrics = train_step(ctx.state, next(batches), rng)
      ctx.step += 1
      for hook in run_hooks:
        hook(ctx)
      for hook in run_hooks:
        hook.step_done(ctx)
  finally:
    for hook in run_hooks:
      hook.close()


def total_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """`config.total_steps`, or `config.num_epochs` over the training split in whole steps; says once (a warning)
  when the schedule's warmup is cut to fit a run this short."""
  steps = config.total_steps or math.ceil(config.num_epochs * num_train_examples / config.batch_size)
  optim.warmup_steps(config.schedule, steps, warn=True)
  return steps


def _initial_state(config, manager, model, mesh, objective, *, image_shape, num_steps, rng, workdir):
  """(state restored from `manager` or freshly initialised (from `config.pretrained` if set), with the heads of
  `objective` if it has any, the parallelism strategy, the learning-rate schedule, the checkpoint's bookkeeping)."""
  abstract_params = jax.eval_shape(functools.partial(models.init_variables, model, image_shape=image_shape), rng)
  tx, learning_rate_fn = optim.from_config(config, total_steps=num_steps, params=abstract_params["params"])
  init = functools.partial(
    state.create_train_state,
    model,
    tx,
    image_shape=image_shape,
    ema=config.ema_decay > 0,
    heads_init=objectives.heads_init(objective),
    heads_tx=_heads_optimizer(config, num_steps),
  )
  abstract_state = jax.eval_shape(init, rng)
  parallel = sharding.create(config.parallelism, mesh, abstract_state)
  if jax.process_index() == 0:
    _describe_model(config, model, abstract_params["params"], workdir, image_shape=image_shape, num_steps=num_steps)
  restored = checkpoints.restore_latest(manager, parallel.restore_target(abstract_state))
  if restored:
    train_state, meta = restored
    logging.info("Resumed from step %d.", int(train_state.step))
  else:
    train_state, meta = parallel.init(init, rng), {}
    if config.pretrained.path:
      train_state = _load_pretrained(config.pretrained, train_state)
  meta = {k: meta[k] for k in ("step", "train_seconds", "best_metric", "evals_without_improvement") if k in meta}
  return parallel.from_checkpoint(train_state), parallel, learning_rate_fn, meta


def _describe_model(config, model, params, workdir: str, *, image_shape, num_steps: int) -> None:
  """Logs one line on the model and the run; the parameter table goes to `PARAMS_FILE` in the workdir."""
  with open(os.path.join(workdir, PARAMS_FILE), "w") as f:
    f.write(models.parameter_overview(params) + "\n")
  logging.info(
    "Model %s: %s parameters (%s), %.3f forward GFLOPs/image; %d steps of %d images on %d devices.",
    config.model.name,
    f"{sum(math.prod(p.shape) for p in jax.tree.leaves(params)):,}",
    PARAMS_FILE,
    models.forward_gflops(model, image_shape=image_shape),
    num_steps,
    config.batch_size,
    jax.device_count(),
  )


class _EvalLogWriter(metric_writers.LoggingWriter):
  """clu's console writer without the train records: the train log's progress line shows them already."""

  def write_scalars(self, step: int, scalars) -> None:
    scalars = {k: v for k, v in scalars.items() if not k.startswith("train/")}
    if scalars:
      super().write_scalars(step, scalars)


def _writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard events and a console line per eval record on the first process; console lines elsewhere."""
  if jax.process_index() != 0:
    return metric_writers.create_default_writer(workdir, just_logging=True)
  return metric_writers.AsyncMultiWriter([_EvalLogWriter(), metric_writers.SummaryWriter(workdir)])


def _load_pretrained(config: ml_collections.ConfigDict, train_state: state.TrainState) -> state.TrainState:
  """Replaces the initial parameters (and their average) and BatchNorm statistics with those of `config.path`
  (`config.pretrained`)."""
  if train_state.batch_stats:
    stats_shardings = jax.tree.map(lambda x: x.sharding, train_state.batch_stats)
    stats = transfer.load_batch_stats(config.path, jax.device_get(train_state.batch_stats))
    train_state = train_state.replace(batch_stats=jax.device_put(stats, stats_shardings))
  shardings = jax.tree.map(lambda x: x.sharding, train_state.params)
  params = transfer.load_pretrained(
    config.path,
    jax.device_get(train_state.params),
    dont_load=tuple(config.dont_load),
    head_bias_init=config.head_bias_init,
    keep_pre_logits=config.keep_pre_logits,
  )
  params = jax.device_put(params, shardings)
  return train_state.replace(params=params, ema_params=params if train_state.ema_params is not None else None)


def _heads_optimizer(config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """The model's optimizer recipe (rule, schedule, clipping, weight decay) for the objective's heads, without the
  freezing and layer-wise rates that name the model's own parameters."""
  heads_config = config.copy_and_resolve_references()
  heads_config.optimizer.freeze = None
  heads_config.optimizer.layerwise_decay = 1.0
  return optim.from_config(heads_config, total_steps=num_steps)[0]


def _train_step(config, parallel, objective, learning_rate_fn) -> Callable:
  step = steps.make_train_step(
    objective=objective,
    learning_rate_fn=learning_rate_fn,
    accum_steps=config.accum_steps,
    ema_decay=config.ema_decay,
    axis_name=sharding.PMAP_AXIS if config.parallelism == "pmap" else None,
  )
  return parallel.train_step(step)


def _train_dataset(source: data.Source, target: data.Source | None, config, *, start_batch: int):
  """This process's training batches from `start_batch` on, with the target stream's images beside them if any."""
  kwargs = dict(
    batch_size=config.batch_size // jax.process_count(),
    start_batch=start_batch,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  ds = data.train_dataset(source, config.data, seed=config.seed, **kwargs)
  if target is None:
    return ds
  target_ds = data.train_dataset(target, data.target_config(config.data), seed=config.seed + TARGET_SEED, **kwargs)
  return data.with_target(ds, target_ds)


def _eval_dataset(source: data.Source, config: ml_collections.ConfigDict):
  return data.eval_dataset(
    source,
    config.data,
    batch_size=config.eval_batch_size // jax.process_count(),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )


def _shapes(ds) -> dict[str, tuple[tuple[int, ...], Any]]:
  return {k: (tuple(spec.shape), spec.dtype.as_numpy_dtype) for k, spec in ds.element_spec.items()}


def _flops_per_step(config, train_ds, train_step, train_state, parallel, rng) -> float:
  """FLOPs of one train step (for MFU); for NaFlex the mean over the sequence lengths that the batches cycle
  through, each of which compiles the step once."""
  shapes = _shapes(train_ds)
  lengths = tuple(config.data.seq_lens)
  if not lengths:
    return mfu.lowered_flops(train_step, train_state, parallel.abstract_batch(shapes), rng) * parallel.programs
  logging.info("NaFlex: batches cycle through sequence lengths %s; the train step compiles once for each.", lengths)
  (batch, *_, width), dtype = shapes["image"]
  flops = [
    mfu.lowered_flops(
      train_step, train_state, parallel.abstract_batch({**shapes, "image": ((batch, n, width), dtype)}), rng
    )
    for n in lengths
  ]
  return sum(flops) / len(flops) * parallel.programs


def _hooks(config, workdir, writer, manager, parallel, ctx, evals, weights, *, flops, more=()) -> list[hooks.Hook]:
  """The periodic actions of the run, in the order they see each step; the train log first (it times the input)."""
  run_hooks = [
    _train_log(config, workdir, writer, manager, parallel, start_step=ctx.step, flops=flops),
    hooks.Preemption(config.log_every),
    hooks.Evaluate(evals, weights, writer, _history_path(workdir)),
    hooks.EarlyStopping(config.early_stopping, ctx.meta),
    *more,
    hooks.Checkpoint(manager, config.checkpoint_every, parallel.to_checkpoint, config.name),
  ]
  if config.profile.num_steps:
    run_hooks.append(hooks.Profile(workdir, first_step=config.profile.first_step, num_steps=config.profile.num_steps))
  return run_hooks


def _history_path(workdir: str) -> str | None:
  """`metrics.jsonl`, written by the first process only."""
  return os.path.join(workdir, "metrics.jsonl") if jax.process_index() == 0 else None


def _train_log(config, workdir, writer, manager, parallel, *, start_step: int, flops: float) -> hooks.TrainLog:
  """The metrics hook, after dropping history records that a resumed run is about to write again."""
  path = _history_path(workdir)
  if path:
    history.truncate(path, after_step=start_step)
  return hooks.TrainLog(
    writer=writer,
    history_path=path,
    intervals=(config.log_every, *registry.intervals(config), config.checkpoint_every),
    batch_size=config.batch_size,
    host_metrics=parallel.host_metrics,
    last_checkpoint=manager.latest_step,
    flops_per_step=flops,
    peak_flops=mfu.job_peak(config.model.dtype or "float32"),
  )


def _evaluators(config, model, source, target, loss_fn, mesh) -> list[registry.Scheduled]:
  """The evaluators `config.evals` lists, built on the run's model and data."""
  setting = registry.Setting(
    config=config,
    model=model,
    source=source,
    target=target,
    loss_fn=loss_fn,
    mesh=mesh,
    class_names=data.class_names(source),
  )
  return registry.from_config(config, setting)


def _weights(parallel: sharding.Jit, train_state: state.TrainState) -> registry.Weights:
  """What the evaluators score of `train_state`: its parameters, and their moving average when kept."""
  current = parallel.to_checkpoint(train_state)
  ema = None if current.ema_params is None else state.variables(current.ema_params, current.batch_stats)
  return registry.Weights(members=(state.variables(current.params, current.batch_stats),), ema=ema)


def _finish(config, workdir: str, ctx: hooks.Context, evaluate: Callable) -> dict[str, Any]:
  """The run's results (evaluating the restored state if nothing was left to train), `results.json` and the
  curves plot."""
  if ctx.stop_reason:
    logging.warning("Stopped at step %d (%s); re-running the same command resumes.", ctx.step, ctx.stop_reason)
  results = {
    "config": config.name,
    "model": config.model.name,
    "dataset": config.data.dataset,
    "split": config.data.eval_split,
    "step": ctx.step,
    "train_seconds": round(ctx.meta.get("train_seconds", 0.0), 2),
    "finished": ctx.step >= ctx.num_steps,
    "stop_reason": ctx.stop_reason,
    **(ctx.eval_metrics if ctx.eval_complete else evaluate(ctx.state)),
  }
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    title = f"{config.name}: {config.model.name} on {config.data.dataset}"
    plots.plot_curves(
      history.read(os.path.join(workdir, "metrics.jsonl")), os.path.join(workdir, "curves.png"), title=title
    )
  return results
