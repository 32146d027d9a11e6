"""Train-step throughput and MFU on an accelerator host, in one command that installs nothing and ends in minutes.

    python benchmarks/accelerator.py --json /tmp/accelerator.json     # GPU/TPU host: the full table, < 5 minutes
    python benchmarks/accelerator.py --tiny                            # any CPU: the same code on tiny shapes

bfloat16 compute (float32 parameters), 224x224, SGD momentum, state donated: images/s and MFU (the step's FLOPs
from XLA's cost analysis, times steps/s, over the chip's published bfloat16 peak; on a CPU the measured matmul peak,
see vitjax/train/mfu.py) for ViT-B/16, ViT-L/16 and ResNet-50 over batch sizes, and for the ViTs with explicit
attention, fused attention (`jax.nn.dot_product_attention`, cuDNN's kernel on NVIDIA GPUs), remat and scan. Rows
run most important first and none starts after `--budget_s`; a row that fails (e.g. cuDNN refusing a shape)
records its error and the run goes on. Prints a markdown table and writes the rows as JSON.
"""

import argparse
import json
import os
import sys
import time
import traceback

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
  image_size=224, steps=10, models={"vit_b16": (128, 256), "vit_l16": (64, 128), "resnet50": (128, 256)}, overrides={}
)
TINY = dict(
  image_size=16,
  steps=2,
  models={"vit_b16": (2,), "resnet50": (2,)},
  overrides={
    "vit_b16": dict(patch_size=8, hidden_size=16, mlp_dim=32, num_heads=2, num_layers=1),
    "resnet50": dict(width=4, stage_sizes=(1,)),
  },
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
  """Every (model, batch size, variant) row in order of importance until the budget is spent."""
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
  deadline, rows = time.monotonic() + budget_s, []
  for name, batch, options in plan:
    row = dict(model=name, batch_size=batch, device=device.device_kind, **_describe(options))
    if time.monotonic() > deadline:
      rows.append(dict(row, error="skipped: time budget spent"))
      continue
    try:
      row |= measure(
        name,
        options,
        batch_size=batch,
        image_size=config["image_size"],
        steps=config["steps"],
        overrides=config["overrides"].get(name, {}),
      )
    except Exception as error:  # noqa: BLE001 - one failing row (a cuDNN refusal, out of memory) must not end the run.
      row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
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


def main(argv: list[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true", help="tiny models at 32x32: the code path in seconds on a CPU")
  parser.add_argument("--budget_s", type=float, default=240.0, help="start no row after this many seconds")
  parser.add_argument("--json", default="", help="also write the rows here")
  args = parser.parse_args(argv)
  rows = run(TINY if args.tiny else FULL, budget_s=args.budget_s)
  print(markdown(rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
