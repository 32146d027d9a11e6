"""Model throughput on this machine: forward and train-step images/s, GFLOPs, fraction of the matmul peak.

    python benchmarks/model_throughput.py --model vit_b16 --image_size 224 --batch_size 8

The float32 matmul peak is measured in the same run (a large `jnp.dot`), so the achieved fraction compares
like with like. The train step is forward + softmax cross-entropy + backward + SGD momentum (optax), jitted,
with the state donated. FLOPs come from XLA's cost analysis of the compiled programs (forward: `train=False`).
"""

import argparse
import json
import os
import statistics
import sys
import time

# Before JAX initialises: keep YNNPACK for dots only. Its convolution path (above all the weight gradient)
# is far slower on CPU than XLA's own; this flag changes nothing for the ViT's matmuls.
if "--xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_experimental_ynn_fusion_type=dot").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vitjax import models  # noqa: E402
from vitjax.models.analysis import forward_gflops  # noqa: E402


def time_call(fn, *, steps: int, warmup: int = 1) -> float:
    """Median seconds per call of `fn()` (which must block until its result is ready) after warmup."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_gflops(*, size: int = 4096, steps: int = 3) -> float:
    """Best-case float32 GFLOP/s of one large square matmul on the default device."""
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (size, size), jnp.float32)
    b = jax.random.normal(key_b, (size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    seconds = time_call(lambda: dot(a, b).block_until_ready(), steps=steps)
    return 2 * size**3 / seconds / 1e9


def make_train_step(model, optimizer):
    """Jitted (params, batch_stats, opt_state, images, labels, rng) -> updated state, loss; state donated."""

    def loss_fn(params, batch_stats, images, labels, rng):
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        logits, updates = model.apply(variables, images, train=True, rngs={"dropout": rng},
                                      mutable=["batch_stats"] if batch_stats else [])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, updates.get("batch_stats", batch_stats)

    def step(params, batch_stats, opt_state, images, labels, rng):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, images, labels, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1, 2))


def benchmark(*, model_name: str, image_size: int, batch_size: int, steps: int, dtype: str) -> dict:
    """Measures peak, forward and train-step throughput of one model; returns a flat dict of results."""
    peak = matmul_peak_gflops()
    model = models.build(model_name, num_classes=1000, dtype=jnp.dtype(dtype))
    images = jax.random.uniform(jax.random.key(1), (batch_size, image_size, image_size, 3), jnp.float32, -1, 1)
    labels = jax.random.randint(jax.random.key(2), (batch_size,), 0, 1000)
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})

    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    fwd_seconds = time_call(lambda: forward(variables, images).block_until_ready(), steps=steps)
    fwd_gflops = forward_gflops(model, image_size=image_size, batch_size=batch_size)

    optimizer = optax.sgd(0.01, momentum=0.9)
    train_step = make_train_step(model, optimizer)
    state = [params, batch_stats, optimizer.init(params)]
    rng = jax.random.key(3)
    compiled = train_step.lower(*state, images, labels, rng).compile()
    cost = compiled.cost_analysis()
    train_gflops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]) / batch_size / 1e9

    def run_train_step():
        state[0], state[1], state[2], loss = compiled(*state, images, labels, rng)
        loss.block_until_ready()

    train_seconds = time_call(run_train_step, steps=steps)
    fwd_ips, train_ips = batch_size / fwd_seconds, batch_size / train_seconds
    return dict(
        model=model_name, image_size=image_size, batch_size=batch_size, dtype=dtype, device=jax.devices()[0].device_kind,
        matmul_peak_gflops=round(peak, 1),
        forward_gflops_per_image=round(fwd_gflops, 2), train_gflops_per_image=round(train_gflops, 2),
        forward_images_per_s=round(fwd_ips, 3), train_images_per_s=round(train_ips, 3),
        forward_gflops_per_s=round(fwd_ips * fwd_gflops, 1), train_gflops_per_s=round(train_ips * train_gflops, 1),
        forward_fraction_of_peak=round(fwd_ips * fwd_gflops / peak, 3),
        train_fraction_of_peak=round(train_ips * train_gflops / peak, 3),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b16", help=f"registered name, e.g. {', '.join(models.names()[:4])}")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported) after one warmup")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    args = parser.parse_args()
    result = benchmark(model_name=args.model, image_size=args.image_size, batch_size=args.batch_size,
                       steps=args.steps, dtype=args.dtype)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
