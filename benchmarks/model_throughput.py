"""Model throughput on this machine: forward and train-step images/s, GFLOPs, fraction of the matmul peak.

    python benchmarks/model_throughput.py --model vit_b16 --image_size 224 --batch_size 8
    python benchmarks/model_throughput.py --model all_conv --batch_size 16  # every convolutional family; a table

The float32 matmul peak is measured in the same run (a large `jnp.dot`), so the achieved fraction compares
like with like; on a chip of the training loop's peak table (vitjax/train/mfu.py) the train step's MFU against the
published peak is printed too. The train step is forward + softmax cross-entropy + backward + SGD momentum
(optax), jitted, with the state donated. FLOPs come from XLA's cost analysis of the compiled programs
(forward: `train=False`).

On a shared machine other processes distort every number here, so each timed section waits (up to
`--patience` seconds) for the CPUs to go idle, and is re-timed when other processes took more than
`--max_other_share` of the CPU time meanwhile; the share seen is reported with each result. XLA settings
come from the environment (`XLA_FLAGS`), as in training; the peak is measured under the same settings.
"""

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vitjax import use_xla_cpu_emitters  # noqa: E402

use_xla_cpu_emitters()  # As the command-line entry points do; before the first JAX computation.
from benchmarks.cpu_share import cpu_ticks, other_share  # noqa: E402
from vitjax import models  # noqa: E402
from vitjax.train import mfu  # noqa: E402

# `--model all_conv`: one model per convolutional family, those registered.
CONV_MODELS = (
  "resnet50",
  "alexnet",
  "vgg16",
  "densenet121",
  "efficientnet_b0",
  "mobilenet_v2",
  "mobilenet_v3_large",
  "convnext_tiny",
)


def wait_until_idle(*, deadline: float, max_share: float, window_s: float = 3.0) -> None:
  """Sleeps until other processes used at most `max_share` of the CPUs over `window_s`, or the deadline."""
  while time.monotonic() < deadline:
    start = cpu_ticks()
    time.sleep(window_s)
    if other_share(start, cpu_ticks()) <= max_share:
      return


def time_call(fn: Callable[[], None], *, steps: int, max_other_share: float, patience_s: float) -> tuple[float, float]:
  """Median seconds per call of `fn()` (blocking) after one warmup call, and the others' CPU share meanwhile.

  Re-times while other processes took more than `max_other_share` of the CPUs, until `patience_s` passed.
  """
  fn()
  deadline = time.monotonic() + patience_s
  while True:
    wait_until_idle(deadline=deadline, max_share=max_other_share)
    start, times = cpu_ticks(), []
    for _ in range(steps):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
    share = other_share(start, cpu_ticks())
    if share <= max_other_share or time.monotonic() >= deadline:
      return statistics.median(times), share


def make_train_step(model, optimizer):
  """Jitted (params, batch_stats, opt_state, images, labels, rng) -> updated state, loss; state donated."""

  def loss_fn(params, batch_stats, images, labels, rng):
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    logits, updates = model.apply(
      variables, images, train=True, rngs={"dropout": rng}, mutable=["batch_stats"] if batch_stats else []
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, updates.get("batch_stats", batch_stats)

  def step(params, batch_stats, opt_state, images, labels, rng):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, images, labels, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1, 2))


def compiled_gflops(compiled, *, batch_size: int) -> float:
  """GFLOPs per image of a compiled program, from XLA's cost analysis."""
  cost = compiled.cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]) / batch_size / 1e9


def benchmark(
  *,
  model_name: str,
  image_size: int,
  batch_size: int,
  steps: int,
  dtype: str,
  max_other_share: float,
  patience_s: float,
) -> dict:
  """Measures the matmul peak, forward and train-step throughput of one model; a flat dict of results.

  The peak is measured before and after the model and the higher value is used, so a burst of load
  elsewhere during one peak measurement cannot inflate the fraction of peak.
  """
  model = models.build(model_name, num_classes=1000, dtype=jnp.dtype(dtype))
  images = jax.random.uniform(jax.random.key(1), (batch_size, image_size, image_size, 3), jnp.float32, -1, 1)
  labels = jax.random.randint(jax.random.key(2), (batch_size,), 0, 1000)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images).compile()
  optimizer = optax.sgd(0.01, momentum=0.9)
  state = [variables["params"], variables.get("batch_stats", {}), optimizer.init(variables["params"])]
  rng = jax.random.key(3)
  train_step = make_train_step(model, optimizer).lower(*state, images, labels, rng).compile()
  train_gflops = compiled_gflops(train_step, batch_size=batch_size)
  fwd_gflops = models.forward_gflops(model, image_size=image_size, batch_size=batch_size)

  size = 4096
  a = jax.random.normal(jax.random.key(4), (size, size), jnp.float32)
  dot = jax.jit(jnp.dot).lower(a, a).compile()

  def run_train_step():
    state[0], state[1], state[2], loss = train_step(*state, images, labels, rng)
    loss.block_until_ready()

  timing = dict(steps=steps, max_other_share=max_other_share, patience_s=patience_s)
  peak_seconds, peak_share = time_call(lambda: dot(a, a).block_until_ready(), **timing)
  fwd_seconds, fwd_share = time_call(lambda: forward(variables, images).block_until_ready(), **timing)
  train_seconds, train_share = time_call(run_train_step, **timing)
  peak_seconds_after, peak_share_after = time_call(lambda: dot(a, a).block_until_ready(), **timing)
  peak = 2 * size**3 / min(peak_seconds, peak_seconds_after) / 1e9
  fwd_ips, train_ips = batch_size / fwd_seconds, batch_size / train_seconds
  return dict(
    model=model_name,
    image_size=image_size,
    batch_size=batch_size,
    dtype=dtype,
    device=jax.devices()[0].device_kind,
    matmul_peak_gflops=round(peak, 1),
    forward_gflops_per_image=round(fwd_gflops, 2),
    train_gflops_per_image=round(train_gflops, 2),
    forward_images_per_s=round(fwd_ips, 3),
    train_images_per_s=round(train_ips, 3),
    forward_gflops_per_s=round(fwd_ips * fwd_gflops, 1),
    train_gflops_per_s=round(train_ips * train_gflops, 1),
    forward_fraction_of_peak=round(fwd_ips * fwd_gflops / peak, 3),
    train_fraction_of_peak=round(train_ips * train_gflops / peak, 3),
    other_processes_cpu_share=round(max(peak_share, fwd_share, train_share, peak_share_after), 3),
    **published_mfu(train_ips * train_gflops * 1e9, dtype=dtype),
  )


def published_mfu(train_flops_per_s: float, *, dtype: str) -> dict[str, float]:
  """On a chip of the loop's peak table (TPUs, A100/H100/H200): the train step's MFU as training logs it."""
  peak = mfu.table_peak(jax.devices()[0].device_kind, dtype)
  if peak is None:
    return {}
  return dict(published_peak_tflops=peak / 1e12, train_mfu=round(train_flops_per_s / peak, 3))


def model_names(spec: str) -> list[str]:
  """`all_conv` or comma-separated registered names -> the names to measure."""
  if spec == "all_conv":
    return [name for name in CONV_MODELS if name in models.names()]
  return spec.split(",")


def markdown_table(results: list[dict]) -> str:
  """The results as a Markdown table: forward and train img/s and their shares of the matmul peak."""
  lines = [
    "| model | batch | fwd img/s | train img/s | fwd GFLOP/img | fwd share of peak | train share of peak |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in results:
    lines.append(
      f"| {r['model']} | {r['batch_size']} | {r['forward_images_per_s']} | {r['train_images_per_s']} | "
      f"{r['forward_gflops_per_image']} | {r['forward_fraction_of_peak']:.1%} | {r['train_fraction_of_peak']:.1%} |"
    )
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--model", default="vit_b16", help=f"registered name(s), comma-separated, or all_conv ({', '.join(CONV_MODELS)})"
  )
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--steps", type=int, default=3, help="timed steps per section (median reported)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
  parser.add_argument(
    "--max_other_share",
    type=float,
    default=0.05,
    help="re-time a section when other processes used more of the CPUs than this",
  )
  parser.add_argument("--patience", type=float, default=600.0, help="seconds to wait for an idle machine")
  args = parser.parse_args()
  results = []
  for name in model_names(args.model):
    result = benchmark(
      model_name=name,
      image_size=args.image_size,
      batch_size=args.batch_size,
      steps=args.steps,
      dtype=args.dtype,
      max_other_share=args.max_other_share,
      patience_s=args.patience,
    )
    print(json.dumps(result), flush=True)
    results.append(result)
  if len(results) > 1:
    print(markdown_table(results))


if __name__ == "__main__":
  main()
