"""Train-step throughput and MFU, then inference latency, on an accelerator host, in one command that installs
nothing and ends in minutes.

    python benchmarks/accelerator.py --json /tmp/accelerator.json     # GPU/TPU host: both tables, < 8 minutes
    python benchmarks/accelerator.py --tiny                            # any CPU: the same code on tiny shapes

bfloat16 compute (float32 parameters), 224x224, SGD momentum, state donated: images/s and MFU (the step's FLOPs
from XLA's cost analysis, times steps/s, over the chip's published bfloat16 peak; on a CPU the measured matmul peak,
see vitjax/train/mfu.py) for ViT-B/16, ViT-L/16 and ResNet-50 over batch sizes, and for the ViTs with explicit
attention, fused attention (`jax.nn.dot_product_attention`, cuDNN's kernel on NVIDIA GPUs), remat and scan. Rows
run most important first and none starts after `--budget_s`; a row that fails (e.g. cuDNN refusing a shape)
records its error and the run goes on. Inference: per model, bfloat16 weights and compute, the batch-1 latency
(median and 90th percentile of `calls` calls, each waited for) and the batch-256 throughput of the jitted forward
pass, within `--inference_budget_s`. Prints two markdown tables and writes the rows as JSON.
"""

import argparse
import functools
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vitjax import use_xla_cpu_emitters  # noqa: E402

use_xla_cpu_emitters()  # As the command-line entry points do; before the first JAX computation.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_throughput import make_train_step  # noqa: E402

from vitjax import models  # noqa: E402
from vitjax.train import mfu  # noqa: E402

FULL = dict(
  image_size=224,
  steps=10,
  models={"vit_b16": (128, 256), "vit_l16": (64, 128), "resnet50": (128, 256)},
  overrides={},
  inference=dict(
    models=("resnet50", "vit_b16", "vit_s16", "mobilenet_v3_large", "efficientnet_b0"), batch=256, calls=50
  ),
)
TINY = dict(
  image_size=16,
  steps=2,
  models={"vit_b16": (2,), "resnet50": (2,)},
  overrides={
    "vit_b16": dict(patch_size=8, hidden_size=16, mlp_dim=32, num_heads=2, num_layers=1),
    "resnet50": dict(width=4, stage_sizes=(1,)),
  },
  inference=dict(models=("vit_b16", "resnet50"), batch=4, calls=5),
)


def variants(name: str, fused: str) -> list[dict]:
  """Model options to compare: the ViT knobs one at a time on top of fused attention; ResNets have none."""
  if not name.startswith("vit"):
    return [{}]
  return [
    dict(attention="explicit"),
    dict(attention=fused),
    dict(attention=fused, remat="dots_saveable"),
    dict(attention=fused, remat="full"),
    dict(attention=fused, scan=True),
  ]


def measure(name: str, options: dict, *, batch_size: int, image_size: int, steps: int, overrides: dict) -> dict:
  """One row: compile seconds, mean step seconds over `steps` after one warmup step, img/s, MFU."""
  model = models.build(name, num_classes=1000, dtype=jnp.bfloat16, **overrides, **options)
  images = jax.random.uniform(jax.random.key(1), (batch_size, image_size, image_size, 3), jnp.float32, -1, 1)
  labels = jax.random.randint(jax.random.key(2), (batch_size,), 0, 1000)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images[:1])
  optimizer = optax.sgd(0.01, momentum=0.9)
  state = [variables["params"], variables.get("batch_stats", {}), optimizer.init(variables["params"])]
  rng = jax.random.key(3)
  start = time.perf_counter()
  compiled = make_train_step(model, optimizer).lower(*state, images, labels, rng).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  flops = float((cost[0] if isinstance(cost, list | tuple) else cost)["flops"])
  *state, loss = compiled(*state, images, labels, rng)
  loss.block_until_ready()
  start = time.perf_counter()
  for _ in range(steps):
    *state, loss = compiled(*state, images, labels, rng)
  loss.block_until_ready()
  step_s = (time.perf_counter() - start) / steps
  return dict(
    images_per_s=round(batch_size / step_s, 1),
    mfu=float(f"{flops / step_s / mfu.job_peak('bfloat16'):.3g}"),  # Significant digits: tiny runs are ~1e-4.
    step_ms=round(1e3 * step_s, 2),
    compile_s=round(compile_s, 1),
    train_gflops_per_image=float(f"{flops / batch_size / 1e9:.4g}"),
    loss=round(float(loss), 4),
  )


def run(config: dict, *, budget_s: float) -> list[dict]:
  """Every (model, batch size, variant) training row in order of importance until the budget is spent."""
  device = jax.devices()[0]
  fused = "cudnn" if device.platform == "gpu" else "xla"
  plan = [
    (name, batch, options)
    for rank in range(max(len(b) for b in config["models"].values()))
    for name, batches in config["models"].items()
    if rank < len(batches)
    for batch in [batches[rank]]
    for options in variants(name, fused)
  ]
  sizes = dict(image_size=config["image_size"], steps=config["steps"])
  jobs = [
    (
      dict(model=name, batch_size=batch, device=device.device_kind, **_describe(options)),
      functools.partial(measure, name, options, batch_size=batch, overrides=config["overrides"].get(name, {}), **sizes),
    )
    for name, batch, options in plan
  ]
  return within_budget(jobs, budget_s)


def within_budget(jobs: list[tuple[dict, Callable[[], dict]]], budget_s: float) -> list[dict]:
  """Each row completed by its measurement, in order; none starts after `budget_s`, and one that fails (a cuDNN
  refusal, out of memory) records its error while the run goes on."""
  deadline, rows = time.monotonic() + budget_s, []
  for row, job in jobs:
    if time.monotonic() > deadline:
      rows.append(dict(row, error="skipped: time budget spent"))
      continue
    try:
      row = row | job()
    except Exception as error:  # noqa: BLE001 - one failing row must not end the run.
      row = dict(row, error=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
      traceback.print_exc()
    rows.append(row)
    print(json.dumps(row), flush=True)
  return rows


def _describe(options: dict) -> dict:
  """The row's knobs, with the model defaults spelled out."""
  return dict(
    attention=options.get("attention", "-"), remat=options.get("remat", "none"), scan=options.get("scan", False)
  )


def markdown(rows: list[dict]) -> str:
  """The rows as a markdown table."""
  head = "| model | batch | attention | remat | scan | img/s | MFU | step ms | compile s | note |"
  lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    values = [r["model"], r["batch_size"], r["attention"], r["remat"], r["scan"]]
    values += [r.get(k, "") for k in ("images_per_s", "mfu", "step_ms", "compile_s")] + [r.get("error", "")]
    lines.append("| " + " | ".join(str(v) for v in values) + " |")
  return "\n".join(lines)


def infer(name: str, *, batch: int, calls: int, image_size: int, overrides: dict) -> dict:
  """One inference row: compile seconds, batch-1 median and p90 latency (ms) over `calls`, images/s at `batch`."""
  model = models.build(name, num_classes=1000, dtype=jnp.bfloat16, **overrides)
  images = jax.random.uniform(jax.random.key(1), (batch, image_size, image_size, 3), jnp.float32, -1, 1)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images[:1])
  variables = jax.tree.map(lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a, variables)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  start = time.perf_counter()
  one, many = (forward.lower(variables, images[:n]).compile() for n in (1, batch))
  row = dict(compile_s=round(time.perf_counter() - start, 1))
  one(variables, images[:1]).block_until_ready()  # Warm-up.
  times = []
  for i in range(calls):
    start = time.perf_counter()
    one(variables, images[i % batch][None]).block_until_ready()
    times.append(1e3 * (time.perf_counter() - start))
  row |= dict(latency_ms=round(statistics.median(times), 3), p90_ms=round(statistics.quantiles(times, n=10)[-1], 3))
  many(variables, images).block_until_ready()
  repeats = max(calls // 10, 2)
  start = time.perf_counter()
  for _ in range(repeats):
    logits = many(variables, images)
  logits.block_until_ready()
  return row | dict(images_per_s=round(batch * repeats / (time.perf_counter() - start), 1))


def run_inference(config: dict, *, budget_s: float) -> list[dict]:
  """Every inference row in order until the budget is spent."""
  settings, kind = config["inference"], jax.devices()[0].device_kind
  kwargs = dict(batch=settings["batch"], calls=settings["calls"], image_size=config["image_size"])
  jobs = [
    (
      dict(model=name, batch_size=settings["batch"], device=kind),
      functools.partial(infer, name, overrides=config["overrides"].get(name, {}), **kwargs),
    )
    for name in settings["models"]
  ]
  return within_budget(jobs, budget_s)


def inference_markdown(rows: list[dict]) -> str:
  """The inference rows as a markdown table."""
  lines = ["| model | batch-1 median ms | batch-1 p90 ms | large batch | img/s | compile s | note |"]
  lines.append("|---|---|---|---|---|---|---|")
  for r in rows:
    values = [r["model"], r.get("latency_ms", ""), r.get("p90_ms", ""), r["batch_size"]]
    values += [r.get("images_per_s", ""), r.get("compile_s", ""), r.get("error", "")]
    lines.append("| " + " | ".join(str(v) for v in values) + " |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true", help="tiny models at 16x16: the code path in seconds on a CPU")
  parser.add_argument("--budget_s", type=float, default=240.0, help="start no training row after this many seconds")
  parser.add_argument("--inference_budget_s", type=float, default=150.0, help="the same for the inference rows")
  parser.add_argument("--json", default="", help="also write the rows here")
  args = parser.parse_args(argv)
  config = TINY if args.tiny else FULL
  rows = dict(train=run(config, budget_s=args.budget_s))
  print(markdown(rows["train"]))
  rows["inference"] = run_inference(config, budget_s=args.inference_budget_s)
  print(inference_markdown(rows["inference"]))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
