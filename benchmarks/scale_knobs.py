"""What `model.remat` and `model.scan` buy: peak memory and compile time of the ViT train step, from XLA alone.

    python benchmarks/scale_knobs.py                  # ViT-B/16 and ViT-L/16 memory, scan compile times
    python benchmarks/scale_knobs.py --memory_models vit_b16 --depths 24

Peak memory is XLA's memory analysis of the compiled train step (temp + argument + output bytes, and the same
less the outputs aliased onto the donated parameters and SGD-momentum state; GiB), at batch 8 and 224x224, for each
`remat`, with the blocks unrolled and scanned. Compile time is `lower(...).compile()` wall time of the same step for
ViT-B-width models of the given depths, blocks unrolled and as one `nn.scan`. Nothing is allocated: the step is
lowered on abstract arrays. On XLA:CPU `remat` only takes effect inside `scan` (the scheduler moves the
recomputation of unrolled blocks back into the forward pass).
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vitjax import use_xla_cpu_emitters  # noqa: E402

use_xla_cpu_emitters()  # As the command-line entry points do; before the first JAX computation.
from vitjax import models  # noqa: E402


def train_step(model, optimizer):
  """(params, opt_state, images, labels, rng) -> (params, opt_state, loss): cross-entropy, backward, update."""

  def step(params, opt_state, images, labels, rng):
    def loss_fn(p):
      logits = model.apply({"params": p}, images, train=True, rngs={"dropout": rng})
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def abstract_inputs(model, optimizer, *, batch_size: int, image_size: int, dtype=jnp.float32) -> tuple:
  """Shapes of (params, opt_state, images, labels, rng) of the train step; nothing is allocated."""
  images = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), dtype)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)["params"]
  opt_state = jax.eval_shape(optimizer.init, params)
  labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
  return params, opt_state, images, labels, jax.eval_shape(lambda: jax.random.key(0))


def compile_step(model, *, batch_size: int, image_size: int) -> tuple[object, float]:
  """The compiled train step of `model` (donated state, as in training) and the seconds lowering + compiling took."""
  optimizer = optax.sgd(0.01, momentum=0.9)
  args = abstract_inputs(model, optimizer, batch_size=batch_size, image_size=image_size)
  start = time.perf_counter()
  compiled = jax.jit(train_step(model, optimizer), donate_argnums=(0, 1)).lower(*args).compile()
  return compiled, time.perf_counter() - start


def memory_gib(compiled) -> dict[str, float]:
  """XLA's memory analysis of a compiled program in GiB: temp (activations, gradients, workspace), arguments,
  outputs, the outputs aliased onto donated arguments, and two peaks: temp + argument + output, and the same less
  the aliased bytes (donated state is updated in place, so it is counted once)."""
  stats = compiled.memory_analysis()
  temp, args = stats.temp_size_in_bytes, stats.argument_size_in_bytes
  out, alias = stats.output_size_in_bytes, stats.alias_size_in_bytes
  gib = lambda b: round(b / 2**30, 3)  # noqa: E731
  return dict(
    temp=gib(temp),
    argument=gib(args),
    output=gib(out),
    alias=gib(alias),
    peak=gib(temp + args + out),
    peak_donated=gib(temp + args + out - alias),
  )


def memory_rows(names: list[str], remats: list[str], *, batch_size: int, image_size: int) -> list[dict]:
  """One row per (model, blocks unrolled or scanned, remat): memory in GiB, and the ratios of the peaks and of the
  temp bytes of the unrolled model without remat to this one's."""
  rows = []
  for name in names:
    base = None
    for scan in (False, True):
      for remat in remats:
        model = models.build(name, num_classes=1000, remat=remat, scan=scan)
        compiled, seconds = compile_step(model, batch_size=batch_size, image_size=image_size)
        memory = memory_gib(compiled)
        base = base or memory
        ratios = {f"{k}_ratio": round(base[k] / memory[k], 2) for k in ("peak", "peak_donated", "temp")}
        rows.append(dict(model=name, scan=scan, remat=remat, **memory, **ratios, compile_s=round(seconds, 1)))
        print(json.dumps(rows[-1]), flush=True)
  return rows


def compile_rows(depths: list[int], *, batch_size: int, image_size: int) -> list[dict]:
  """One row per depth: compile seconds of ViT-B-width train steps unrolled and scanned, and their ratio."""
  rows = []
  for depth in depths:
    times = {}
    for scan in (False, True):
      model = models.build("vit_b16", num_classes=1000, num_layers=depth, scan=scan)
      times[scan] = compile_step(model, batch_size=batch_size, image_size=image_size)[1]
    rows.append(
      dict(
        depth=depth,
        unrolled_s=round(times[False], 1),
        scan_s=round(times[True], 1),
        ratio=round(times[False] / times[True], 1),
      )
    )
    print(json.dumps(rows[-1]), flush=True)
  return rows


def markdown(memory: list[dict], compiles: list[dict]) -> str:
  """Both tables as markdown."""
  lines = [
    "| model | blocks | remat | temp | temp+arg+out | less donated | plain / this (temp, peak, less donated) |",
    "|---|---|---|---|---|---|---|",
  ]
  lines += [
    f"| {r['model']} | {'scan' if r['scan'] else 'unrolled'} | {r['remat']} | {r['temp']} | {r['peak']} | "
    f"{r['peak_donated']} | {r['temp_ratio']}x, {r['peak_ratio']}x, {r['peak_donated_ratio']}x |"
    for r in memory
  ]
  lines += ["", "| depth (ViT-B width) | unrolled compile s | scan compile s | ratio |", "|---|---|---|---|"]
  lines += [f"| {r['depth']} | {r['unrolled_s']} | {r['scan_s']} | {r['ratio']}x |" for r in compiles]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--memory_models", nargs="*", default=["vit_b16", "vit_l16"])
  parser.add_argument("--remats", nargs="*", default=["none", "full", "dots_saveable"])
  parser.add_argument("--depths", nargs="*", type=int, default=[24, 32])
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--image_size", type=int, default=224)
  args = parser.parse_args()
  sizes = dict(batch_size=args.batch_size, image_size=args.image_size)
  memory = memory_rows(args.memory_models, args.remats, **sizes)
  compiles = compile_rows(args.depths, **sizes)
  print(markdown(memory, compiles))


if __name__ == "__main__":
  main()
