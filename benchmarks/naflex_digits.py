"""A NaFlex ViT against the same ViT on squashed squares, on digits placed on wide, tall and square canvases.

    python benchmarks/naflex_digits.py
    python benchmarks/naflex_digits.py --steps 600 --train_seq_lens 16 36 64 --eval_seq_lens 16 36 64 100

scikit-learn's 8x8 digits (the 1,437 / 360 split of `vitjax.data.digits`), doubled to 16x16, are placed at random
positions on canvases of 16x64, 64x16, 24x48, 48x24 or 32x32 pixels (a new placement each epoch in training, one
fixed placement for the test). Both arms train the same module (`naflexvit_micro4` cut to width 64) with the same
steps, batch and optimiser, each step at a sequence length drawn from `--train_seq_lens` (one compiled step per
length):
  naflex:   `resize_to_seq(L, 4)|value_range(-1, 1)|patchify(4, L)` in tf.data, the canvas at its aspect ratio;
  squashed: `resize(4 sqrt(L))|value_range(-1, 1)`, the canvas squashed to the square of L patches.
Both are then evaluated at every `--eval_seq_lens` length (squares, so that both see at most L patches): test
accuracy and inference img/s (batch 256, compiled, median of 5; the NaFlex batch carries its padding).
"""

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vitjax import models  # noqa: E402
from vitjax.data import digits, preprocess  # noqa: E402

CANVASES = ((16, 64), (64, 16), (24, 48), (48, 24), (32, 32))
PATCH = 4
MODEL = dict(hidden_size=64, mlp_dim=128, num_heads=4, num_layers=4, posemb_grid=(8, 8))


def digit_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """(images (N, 16, 16, 1) uint8, labels) of each split."""
  from sklearn import datasets  # noqa: PLC0415

  data = datasets.load_digits()
  images = np.kron(np.round(data.images * (255 / 16)), np.ones((2, 2))).astype(np.uint8)[..., None]
  return {split: (images[index], data.target[index]) for split, index in digits.split_indices().items()}


def on_canvases(images: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
  """Each image at a random position on a canvas of a random shape from CANVASES."""
  out = []
  for image in images:
    h, w = CANVASES[rng.integers(len(CANVASES))]
    canvas = np.zeros((h, w, 1), np.uint8)
    y, x = rng.integers(0, h - 15), rng.integers(0, w - 15)
    canvas[y : y + 16, x : x + 16] = image
    out.append(canvas)
  return out


def dataset(images, labels, spec: str, *, batch: int, seed: int | None) -> tf.data.Dataset:
  """Batches of `spec` applied to each canvas; shuffled, placed anew and repeated when `seed` is given."""

  def canvases():
    rng = np.random.default_rng(seed or 0)
    while True:
      order = rng.permutation(len(labels)) if seed is not None else np.arange(len(labels))
      placed = on_canvases(images[order], rng if seed is not None else np.random.default_rng(0))
      yield from zip(placed, labels[order])
      if seed is None:
        return

  signature = (tf.TensorSpec((None, None, 1), tf.uint8), tf.TensorSpec((), tf.int64))
  ds = tf.data.Dataset.from_generator(canvases, output_signature=signature)
  op = preprocess.parse(spec)
  ds = ds.map(lambda image, label: {**op({"image": image}, tf.constant([0, 0])), "label": label}, num_parallel_calls=2)
  return ds.batch(batch, drop_remainder=seed is not None).prefetch(2)


def spec_for(arm: str, seq_len: int) -> str:
  if arm == "naflex":
    return f"resize_to_seq({seq_len}, {PATCH})|value_range(-1, 1)|patchify({PATCH}, {seq_len})"
  side = PATCH * math.isqrt(seq_len)
  return f"resize(({side}, {side}))|value_range(-1, 1)"


def train(arm: str, model, splits, args) -> dict:
  """The model's parameters after `args.steps` steps, each at a sequence length drawn from args.train_seq_lens."""
  images, labels = splits["train"]
  streams = {
    s: iter(dataset(images, labels, spec_for(arm, s), batch=args.batch, seed=s).as_numpy_iterator())
    for s in args.train_seq_lens
  }
  first = next(streams[args.train_seq_lens[0]])["image"]
  params = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(first)["params"]
  schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, args.steps // 10, args.steps)
  optimizer = optax.adamw(schedule, weight_decay=1e-4)
  state = optimizer.init(params)

  @jax.jit
  def step(params, state, batch, rng):
    def loss_fn(p):
      logits = model.apply({"params": p}, batch["image"], train=True, rngs={"dropout": rng})
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  rng = np.random.default_rng(1)
  start = time.perf_counter()
  for i in range(args.steps):
    seq_len = args.train_seq_lens[rng.integers(len(args.train_seq_lens))]
    params, state, loss = step(params, state, next(streams[seq_len]), jax.random.key(i))
    if (i + 1) % (args.steps // 5) == 0:
      print(f"  {arm} step {i + 1}: loss {float(loss):.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
  print(f"  {arm}: {step._cache_size()} compiled train steps for {len(args.train_seq_lens)} sequence lengths")
  return params


def evaluate(arm: str, model, params, splits, seq_len: int) -> tuple[float, float]:
  """(test accuracy, inference images/s at batch 256) at `seq_len`."""
  images, labels = splits["test"]
  forward = jax.jit(lambda x: jnp.argmax(model.apply({"params": params}, x, train=False), -1))
  batches = list(dataset(images, labels, spec_for(arm, seq_len), batch=256, seed=None).as_numpy_iterator())
  correct = sum(int((np.asarray(forward(b["image"])) == b["label"]).sum()) for b in batches)
  timings = []
  for _ in range(5):
    begin = time.perf_counter()
    jax.block_until_ready(forward(batches[0]["image"]))
    timings.append(time.perf_counter() - begin)
  return correct / len(labels), len(batches[0]["label"]) / float(np.median(timings))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--lr", type=float, default=2e-3)
  parser.add_argument("--train_seq_lens", nargs="+", type=int, default=[16, 36, 64])
  parser.add_argument("--eval_seq_lens", nargs="+", type=int, default=[16, 36, 64, 100])
  args = parser.parse_args()
  tf.config.set_visible_devices([], "GPU")
  splits = digit_arrays()
  model = models.build("naflexvit_micro4", num_classes=10, **MODEL)
  results = {}
  for arm in ("naflex", "squashed"):
    params = train(arm, model, splits, args)
    results[arm] = {s: evaluate(arm, model, params, splits, s) for s in args.eval_seq_lens}
  print(
    f"\n{jax.devices()[0].device_kind}, {args.steps} steps of batch {args.batch}, train lengths {args.train_seq_lens}\n"
  )
  print("| seq len | NaFlex accuracy | squashed accuracy | NaFlex img/s | squashed img/s |\n|---|---|---|---|---|")
  for s in args.eval_seq_lens:
    (a, fa), (b, fb) = results["naflex"][s], results["squashed"][s]
    print(f"| {s} | {a:.1%} | {b:.1%} | {fa:.0f} | {fb:.0f} |")


if __name__ == "__main__":
  main()
