"""Overhead of the full training loop (input pipeline, logging, checkpoints) over the bare compiled train step.

    python benchmarks/loop_overhead.py                      # the quickstart
    python benchmarks/loop_overhead.py --preset vit_s16     # ViT-S/16 at 224 on the digits upscaled

All measurements run in this process on the same model, batch size and optimizer:
  bare step       the jit train step alone on one device-resident batch;
  full loop       ``train_and_evaluate`` as configured: tf.data input, prefetch, metric fetches, async checkpoints;
  loop, no input  the same loop fed one in-memory batch over and over, which isolates what the loop itself adds;
  input CPU       process CPU time per batch of the tf.data pipeline read alone.
On an accelerator host the input pipeline runs on CPU cores the step does not use; on a CPU-only machine it
takes its CPU time from the step, so there the full loop's overhead is at least input CPU / (step x cores).
The first logged interval holds the compilation and the final evaluation is not a step: both are left out.
"""

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vitjax import use_xla_cpu_emitters  # noqa: E402

use_xla_cpu_emitters()  # As the command-line entry points do; before the first JAX computation.

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from configs import quickstart  # noqa: E402
from vitjax import data, losses, models, sharding  # noqa: E402
from vitjax.train import loop, objectives, optim, state, steps  # noqa: E402

PRESETS = {
  # The quickstart's own logging and checkpoint intervals.
  "quickstart": dict(steps=1000, log_every=100, checkpoint_every=500),
  # A checkpoint every 24 steps (about 45 s here) is far more often than any real run saves.
  "vit_s16": dict(steps=48, log_every=8, checkpoint_every=24, model="vit_s16", image_size=224, batch_size=8),
}


def make_config(preset: str):
  settings = PRESETS[preset]
  config = quickstart.get_config()
  if "model" in settings:
    config.model.name = settings["model"]
    size = settings["image_size"]
    config.data.pp_train = f"pad_and_crop(1)|resize({size}, method='nearest')|to_rgb|value_range(-1, 1)"
    config.data.pp_eval = f"resize({size}, method='nearest')|to_rgb|value_range(-1, 1)"
    config.batch_size = config.eval_batch_size = settings["batch_size"]
  config.total_steps = settings["steps"]
  config.log_every, config.checkpoint_every = settings["log_every"], settings["checkpoint_every"]
  config.eval_every = settings["steps"]
  return config


def prepared_source(config) -> data.Source:
  source = data.from_config(config.data)
  data.prepare(source)
  return source


def first_batch(config) -> dict[str, np.ndarray]:
  builder = prepared_source(config)
  return next(data.as_numpy(data.train_dataset(builder, config.data, batch_size=config.batch_size, seed=0)))


def bare_step_seconds(config, *, num_steps: int) -> float:
  """Seconds per step of the compiled train step alone, on a batch already on the devices."""
  model = models.from_config(config.model, num_classes=data.num_classes(prepared_source(config)))
  batch = first_batch(config)
  tx, schedule = optim.from_config(config, total_steps=num_steps)
  init = functools.partial(state.create_train_state, model, tx, image_shape=batch["image"].shape[1:])
  parallel = sharding.Jit(sharding.make_mesh(), jax.eval_shape(init, jax.random.key(0)))
  train_state = parallel.init(init, jax.random.key(0))
  step = parallel.train_step(
    steps.make_train_step(objective=objectives.supervised(losses.from_config(config.loss)), learning_rate_fn=schedule)
  )
  device_batch = parallel.place_batch(batch)
  train_state, metrics = step(train_state, device_batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(num_steps):
    train_state, metrics = step(train_state, device_batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / num_steps


def loop_step_seconds(config) -> tuple[float, float]:
  """Seconds per step inside the full loop after the first (compiling) interval, and the input-wait fraction."""
  with tempfile.TemporaryDirectory() as workdir:
    loop.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      intervals = [r for r in map(json.loads, f) if r["split"] == "train"][1:]
  seconds = sum(config.log_every / r["steps_per_sec"] for r in intervals)
  waits = np.mean([r["input_wait_fraction"] for r in intervals])
  return seconds / (config.log_every * len(intervals)), float(waits)


def loop_without_input_seconds(config) -> float:
  """``loop_step_seconds`` with the tf.data pipeline replaced by one in-memory batch, repeated."""
  batch = first_batch(config)
  repeated = lambda *args, **kwargs: tf.data.Dataset.from_tensors(batch).repeat()  # noqa: E731
  with mock.patch.object(data, "train_dataset", repeated):
    return loop_step_seconds(config)[0]


def input_cpu_seconds(config, *, num_batches: int) -> float:
  """Process CPU seconds (all threads) per batch of the training input pipeline, read on its own."""
  builder = prepared_source(config)
  batches = data.as_numpy(data.train_dataset(builder, config.data, batch_size=config.batch_size, seed=0))
  for _ in range(5):
    next(batches)
  start = time.process_time()
  for _ in range(num_batches):
    next(batches)
  return (time.process_time() - start) / num_batches


def measure_round(config) -> dict[str, float]:
  """One round: bare step, full loop, loop without input work, bare step again (seconds per step)."""
  # Timing the bare step before and after the loops and averaging keeps a drift of the machine's speed during
  # the round (other load, clock changes) from passing for overhead.
  before = bare_step_seconds(config, num_steps=config.total_steps // 2)
  loop, wait = loop_step_seconds(config)
  no_input = loop_without_input_seconds(config)
  after = bare_step_seconds(config, num_steps=config.total_steps // 2)
  return dict(bare=(before + after) / 2, bare_before=before, bare_after=after, loop=loop, wait=wait, no_input=no_input)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="quickstart")
  parser.add_argument("--rounds", type=int, default=3, help="measurement rounds; medians are reported")
  args = parser.parse_args()
  config = make_config(args.preset)
  rounds = [measure_round(config) for _ in range(args.rounds)]
  input_cpu = input_cpu_seconds(config, num_batches=max(20, config.total_steps // 2))
  median = lambda key: float(np.median([r[key] for r in rounds]))  # noqa: E731
  overhead = lambda key: 100 * float(np.median([r[key] / r["bare"] - 1 for r in rounds]))  # noqa: E731
  bare, cores = median("bare"), len(os.sched_getaffinity(0))
  print(
    f"{args.preset}: {config.model.name}, batch {config.batch_size} on {jax.device_count()} device(s), "
    f"{cores} CPU cores; checkpoint every {config.checkpoint_every}, log every {config.log_every} steps; "
    f"median of {len(rounds)} round(s)"
  )
  for i, r in enumerate(rounds):
    print(
      f"  round {i}: bare {1000 * r['bare_before']:.1f} / {1000 * r['bare_after']:.1f} ms (before / after), "
      f"loop {1000 * r['loop']:.1f} ms, loop without input work {1000 * r['no_input']:.1f} ms"
    )
  print(f"  bare train step        {1000 * bare:9.1f} ms")
  print(
    f"  full loop, per step    {1000 * median('loop'):9.1f} ms  {overhead('loop'):+6.1f} %  "
    f"(input wait {100 * median('wait'):.1f}% of step time)"
  )
  print(f"  loop, no input work    {1000 * median('no_input'):9.1f} ms  {overhead('no_input'):+6.1f} %")
  print(
    f"  input pipeline         {1000 * input_cpu:9.2f} CPU-ms per batch = "
    f"{100 * input_cpu / (bare * cores):.1f}% of the step's {cores}-core CPU time"
  )


if __name__ == "__main__":
  main()
