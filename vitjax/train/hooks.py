"""Periodic actions of the train loop: each sees the step just taken through a shared `Context` and decides itself
whether it is due. In loop order: `TrainLog` (metrics, NaN check, progress line with ETA and MFU), `Preemption`,
`Evaluate`, `EarlyStopping`, `Checkpoint`, and optionally clu's `Profile`.
"""

import dataclasses
import datetime
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils

from vitjax import checkpoints
from vitjax.errors import ConfigError
from vitjax.evaluate import registry
from vitjax.train import history

# Steps dispatched ahead of the host: enough to hide dispatch latency. Unbounded run-ahead also starves XLA's CPU
# collectives on simulated multi-device hosts (all-reduce rendezvous timeouts).
MAX_STEPS_IN_FLIGHT = 2
# Longest silence of the console between progress lines, however far apart log_every puts the records.
PROGRESS_SECONDS = 20.0


@dataclasses.dataclass
class Context:
  """What the loop and its hooks share: the step just taken, the state and metrics after it, and what hooks found.

  `meta` is the bookkeeping a checkpoint carries (train seconds, early-stopping record), so a resumed run's hooks
  continue where they were.
  """

  num_steps: int
  meta: dict[str, Any]
  step: int = 0
  state: Any = None
  step_metrics: Any = None
  stop_reason: str | None = None
  eval_metrics: dict[str, float] | None = None
  evaluated: bool = False  # Whether `eval_metrics` are from this step.
  eval_complete: bool = False  # Whether every evaluator gave its metrics to the latest `eval_metrics`.
  input_counts: dict[str, int] = dataclasses.field(default_factory=dict)  # Records skipped so far by this process.

  @property
  def is_last(self) -> bool:
    return self.step == self.num_steps


def every(step: int, interval: int) -> bool:
  return bool(interval) and step % interval == 0


class Hook:
  """A periodic action: called after every step, it decides itself whether it is due."""

  def __call__(self, ctx: Context) -> None:
    raise NotImplementedError

  def step_done(self, ctx: Context) -> None:
    """Called once every hook has seen the step."""

  def close(self) -> None:
    """Called when the loop ends, normally or not."""


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient norm became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclasses.dataclass
class TrainLog(Hook):
  """Collects every step's metrics without blocking (at most `MAX_STEPS_IN_FLIGHT` steps ahead) and, every
  `intervals` step (log, eval and checkpoint steps alike, so nothing non-finite is evaluated or saved), checks
  them, writes their mean with steps/s, images/s, MFU and input-wait fraction, and logs a progress line.

  The console also hears from it by the clock: after the first step (how long compiling took) and at least every
  `progress_seconds` between records; with `bar` (default: when stderr is a terminal) a tqdm bar shows every step.
  """

  writer: metric_writers.MetricWriter
  history_path: str | None  # None on processes other than the first.
  intervals: tuple[int, ...]
  batch_size: int
  host_metrics: Callable[[Any], Any]
  last_checkpoint: Callable[[], int | None]
  flops_per_step: float = 0.0
  peak_flops: float = 0.0
  progress_seconds: float = PROGRESS_SECONDS
  bar: bool | None = None

  def __post_init__(self):
    self._pending: list[tuple[int, Any]] = []
    self._interval_start, self._wait, self._started = time.perf_counter(), 0.0, time.time()
    self._steps, self._last_line, self._compiled, self._fired = 0, time.perf_counter(), False, False
    if self.bar is None:
      self.bar = sys.stderr.isatty()
    self._bar = None

  def timed(self, batches: Iterable[Any]) -> Iterator[Any]:
    """`batches`, counting the time the loop waits for each as input wait."""
    iterator = iter(batches)
    while True:
      start = time.perf_counter()
      try:
        batch = next(iterator)
      except StopIteration:
        return
      self._wait += time.perf_counter() - start
      yield batch

  def __call__(self, ctx: Context) -> None:
    self._pending.append((ctx.step, ctx.step_metrics))
    self._steps += 1
    if len(self._pending) > MAX_STEPS_IN_FLIGHT:  # Bounded run-ahead: the host never queues unboundedly many steps.
      jax.block_until_ready(self._pending[-MAX_STEPS_IN_FLIGHT - 1][1])
    self._fired = ctx.is_last or any(every(ctx.step, i) for i in self.intervals)
    first = not self._compiled
    if first:
      self._first_step(ctx)
    if self._fired:
      self._record(ctx)
    elif not first and self._clock_line_due():
      records = self.host_metrics([m for _, m in self._pending])  # Kept pending: the record comes at its step.
      summary = self.summary(records, elapsed=time.perf_counter() - self._interval_start)
      self._log(progress_line(ctx.step, ctx.num_steps, summary, started=self._started))
    if self._bar:
      self._bar.update(ctx.step - self._bar.n)

  def _clock_line_due(self) -> bool:
    """Whether the console has been silent for `progress_seconds` (the first process logs; the bar needs none)."""
    return bool(self.history_path) and not self._bar and time.perf_counter() - self._last_line >= self.progress_seconds

  def _first_step(self, ctx: Context) -> None:
    """Logs how long the first step took (compiling, mostly) and starts the interval after it, so that steps/s
    and the ETA count running steps only."""
    self._compiled = True
    jax.block_until_ready(ctx.step_metrics)
    seconds = time.perf_counter() - self._interval_start
    if self.bar and self.history_path:
      self._bar = tqdm.tqdm(total=ctx.num_steps, initial=ctx.step - 1, unit="step", dynamic_ncols=True)
    self._log(f"step {ctx.step}/{ctx.num_steps}: first step done in {seconds:.1f}s (compiling the train step).")
    if not self._fired:
      ctx.meta["train_seconds"] = ctx.meta.get("train_seconds", 0.0) + seconds
      self._interval_start, self._wait, self._steps = time.perf_counter(), 0.0, 0

  def _record(self, ctx: Context) -> None:
    """Checks the interval's metrics, writes their summary and logs the progress line."""
    steps = [s for s, _ in self._pending]
    records = list(zip(steps, self.host_metrics([m for _, m in self._pending])))
    self._pending = []
    check_finite(records, self.last_checkpoint())
    elapsed = time.perf_counter() - self._interval_start
    ctx.meta["train_seconds"] = ctx.meta.get("train_seconds", 0.0) + elapsed
    summary = self.summary([m for _, m in records], elapsed=elapsed)
    if "skipped" in ctx.input_counts:  # Unreadable records replaced (config.data.strict=False), read so far.
      summary["input_skipped"] = float(ctx.input_counts["skipped"])
    self.writer.write_scalars(ctx.step, {f"train/{k}": v for k, v in summary.items()})
    if self.history_path:
      history.append(self.history_path, {"step": ctx.step, "split": "train", **summary})
      self._log(progress_line(ctx.step, ctx.num_steps, summary, started=self._started))
      if self._bar:
        self._bar.set_postfix(loss=f"{summary['loss']:.4g}", refresh=False)
    self.writer.flush()

  def _log(self, line: str) -> None:
    """Logs `line` on the first process, above the bar if there is one."""
    if not self.history_path:
      return
    self._last_line = time.perf_counter()
    if self._bar:
      with tqdm.tqdm.external_write_mode():
        logging.info(line)
    else:
      logging.info(line)

  def summary(self, records: list[dict[str, np.ndarray]], *, elapsed: float) -> dict[str, float]:
    """Means of the interval's metrics, and its throughput, MFU and input-wait fraction."""
    summary = {k: float(np.mean([m[k] for m in records])) for k in records[0]}
    steps_per_sec = self._steps / elapsed
    summary.update(
      steps_per_sec=steps_per_sec,
      images_per_sec=steps_per_sec * self.batch_size,
      images_per_sec_per_device=steps_per_sec * self.batch_size / jax.device_count(),
      input_wait_fraction=self._wait / elapsed,
    )
    if self.flops_per_step and self.peak_flops:
      summary["mfu"] = self.flops_per_step * steps_per_sec / self.peak_flops
    return summary

  def step_done(self, ctx: Context) -> None:
    if self._fired:  # Evaluation and checkpointing time is not training time.
      self._interval_start, self._wait, self._steps = time.perf_counter(), 0.0, 0

  def close(self) -> None:
    if self._bar:
      self._bar.close()


def check_finite(records: list[tuple[int, dict[str, np.ndarray]]], last_checkpoint: int | None) -> None:
  """Raises NonFiniteLossError at the first step whose loss or gradient norm is not finite."""
  for step, m in records:
    if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
      last = f"step {last_checkpoint}" if last_checkpoint is not None else "none yet"
      raise NonFiniteLossError(
        f"Non-finite loss ({m['loss']}) or gradient norm ({m['grad_norm']}) at step {step}; last good checkpoint: "
        f"{last}. Lower the learning rate or clip gradients (config.optimizer.grad_clip_norm)."
      )


def progress_line(step: int, total: int, summary: dict[str, float], *, started: float) -> str:
  eta = datetime.timedelta(seconds=round((total - step) / max(summary["steps_per_sec"], 1e-9)))
  elapsed = datetime.timedelta(seconds=round(time.time() - started))
  mfu = f" | MFU {100 * summary['mfu']:.1f}%" if "mfu" in summary else ""
  return (
    f"step {step}/{total} ({100 * step / total:.0f}%) | loss {summary['loss']:.4g} | "
    f"{summary['steps_per_sec']:.1f} steps/s | {summary['images_per_sec']:.0f} img/s{mfu} | "
    f"elapsed {elapsed} | ETA {eta}"
  )


class Preemption(Hook):
  """Turns SIGTERM into a stop at the next log step, where every process agrees to stop, and a checkpoint."""

  def __init__(self, interval: int):
    self.interval, self.requested = interval, False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.requested = True

  def __call__(self, ctx: Context) -> None:
    if (ctx.is_last or every(ctx.step, self.interval)) and self.reached():
      ctx.stop_reason = "SIGTERM"

  def reached(self) -> bool:
    if jax.process_count() > 1:  # Every process must stop at the same step.
      return bool(multihost_utils.process_allgather(np.array(self.requested)).any())
    return self.requested

  def close(self) -> None:
    signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class Evaluate(Hook):
  """At each evaluator's own interval and at the last step: the evaluators of `evals` then due score
  `weights(state)`, their metrics written as one eval record."""

  evals: Sequence[registry.Scheduled]
  weights: Callable[[Any], registry.Weights]
  writer: metric_writers.MetricWriter
  history_path: str | None

  def __call__(self, ctx: Context) -> None:
    due = [entry for entry in self.evals if entry.due(ctx.step, is_last=ctx.is_last)]
    ctx.evaluated = bool(due)
    if not ctx.evaluated:
      return
    ctx.eval_complete = len(due) == len(self.evals)
    ctx.eval_metrics = registry.evaluate(due, self.weights(ctx.state))
    self.writer.write_scalars(ctx.step, {f"eval/{k}": v for k, v in ctx.eval_metrics.items()})
    if self.history_path:
      history.append(self.history_path, {"step": ctx.step, "split": "eval", **ctx.eval_metrics})
    self.writer.flush()


class EarlyStopping(Hook):
  """Stops when eval `metric` has not improved for `patience` evaluations (0: never); its record is kept in the
  checkpoint's meta, so a resumed run counts on."""

  def __init__(self, config: ml_collections.ConfigDict, meta: dict[str, Any]):
    self.metric, self.patience, self.sign = config.metric, config.patience, 1 if config.mode == "max" else -1
    meta.setdefault("best_metric", None)
    meta.setdefault("evals_without_improvement", 0)

  def __call__(self, ctx: Context) -> None:
    if not ctx.evaluated or (self.metric not in ctx.eval_metrics and not ctx.eval_complete):
      return  # Its evaluator was not due at this step.
    if self.metric not in ctx.eval_metrics:
      raise ConfigError(
        f"config.early_stopping.metric={self.metric!r} is not an eval metric; "
        f"choose one of: {', '.join(sorted(ctx.eval_metrics))}."
      )
    value, best = ctx.eval_metrics[self.metric], ctx.meta["best_metric"]
    if best is None or self.sign * (value - best) > 0:
      ctx.meta.update(best_metric=value, evals_without_improvement=0)
    else:
      ctx.meta["evals_without_improvement"] += 1
    if self.patience and ctx.meta["evals_without_improvement"] >= self.patience:
      ctx.stop_reason = f"no eval/{self.metric} gain in {self.patience} evals"


@dataclasses.dataclass
class Checkpoint(Hook):
  """Saves the state with the input position and `ctx.meta` every `interval` steps, at the last and on a stop."""

  manager: Any
  interval: int
  to_checkpoint: Callable[[Any], Any]
  run_name: str

  def __call__(self, ctx: Context) -> None:
    if ctx.is_last or ctx.stop_reason or every(ctx.step, self.interval):
      meta = {"step": ctx.step, "input_batches": ctx.step, "config": self.run_name, **ctx.meta}
      checkpoints.save(self.manager, self.to_checkpoint(ctx.state), step=ctx.step, meta=meta)

  def close(self) -> None:
    checkpoints.wait(self.manager)


class Profile(Hook):
  """clu's periodic `Profile` action: a JAX profiler trace of `num_steps` steps from `first_step` in `logdir`."""

  def __init__(self, logdir: str, *, first_step: int, num_steps: int):
    self.action = periodic_actions.Profile(
      logdir=logdir,
      num_profile_steps=num_steps,
      profile_duration_ms=None,
      first_profile=first_step,
      every_secs=None,  # One trace: clu repeats it neither by time (with this) nor by steps (its default).
    )

  def __call__(self, ctx: Context) -> None:
    self.action(ctx.step)

  def close(self) -> None:
    try:  # A run that ends inside the traced steps still writes its trace.
      jax.profiler.stop_trace()
    except RuntimeError:  # No trace running: it ended on schedule, or never started.
      pass
