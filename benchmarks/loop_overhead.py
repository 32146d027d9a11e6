"""Overhead of the full training loop (input pipeline, logging, checkpoints) over the bare compiled train step.

    python benchmarks/loop_overhead.py                      # the quickstart
    python benchmarks/loop_overhead.py --preset vit_s16     # ViT-S/16 at 224 on the digits upscaled

Both measurements run in this process on the same model, batch size and optimizer: first the bare jit step on one
device-resident batch, then `train_and_evaluate` (checkpointing and logging as configured, the evaluation at the
end excluded). The first logged interval holds the compilation and is left out.
"""

import argparse
import functools
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import quickstart  # noqa: E402
from vitjax import data, models, optim, sharding, steps, train  # noqa: E402

PRESETS = {
    "quickstart": dict(steps=400, log_every=50, checkpoint_every=100),
    "vit_s16": dict(steps=24, log_every=4, checkpoint_every=8, model="vit_s16", image_size=224, batch_size=8),
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


def bare_step_seconds(config, *, num_steps: int) -> float:
  """Seconds per step of the compiled train step alone, on a batch already on the devices."""
  builder = train.prepare_dataset(config)
  model = models.build(config.model.name, num_classes=data.num_classes(builder), **train.model_overrides(config))
  batch = next(data.as_numpy(data.train_dataset(builder, config.data, batch_size=config.batch_size, seed=0)))
  tx, schedule = optim.create_optimizer(config, total_steps=num_steps)
  init = functools.partial(train.create_train_state, model, tx, image_shape=batch["image"].shape[1:])
  parallel = sharding.Jit(sharding.make_mesh(), jax.eval_shape(init, jax.random.key(0)))
  state = parallel.init(init, jax.random.key(0))
  step = parallel.train_step(steps.make_train_step(loss_fn=train.loss_function(config), learning_rate_fn=schedule))
  device_batch = parallel.place_batch(batch)
  state, metrics = step(state, device_batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(num_steps):
    state, metrics = step(state, device_batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / num_steps


def loop_step_seconds(config, workdir: str) -> tuple[float, float]:
  """Seconds per step inside the full loop after the first (compiling) interval, and the input-wait fraction."""
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    intervals = [r for r in map(json.loads, f) if r["split"] == "train"][1:]
  seconds = sum(config.log_every / r["steps_per_sec"] for r in intervals)
  waits = np.mean([r["input_wait_fraction"] for r in intervals])
  return seconds / (config.log_every * len(intervals)), float(waits)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="quickstart")
  args = parser.parse_args()
  config = make_config(args.preset)
  bare = bare_step_seconds(config, num_steps=config.total_steps // 2)
  with tempfile.TemporaryDirectory() as workdir:
    loop, wait = loop_step_seconds(config, workdir)
  print(f"{args.preset}: {config.model.name}, batch {config.batch_size} on {jax.device_count()} device(s)")
  print(f"  bare train step     {1000 * bare:8.1f} ms")
  print(f"  full loop, per step {1000 * loop:8.1f} ms  (input wait {100 * wait:.1f}% of step time; "
        f"checkpoint every {config.checkpoint_every}, log every {config.log_every})")
  print(f"  overhead            {100 * (loop / bare - 1):+8.1f} %")


if __name__ == "__main__":
  main()
