"""Model-FLOPs utilisation: the FLOPs a train step does (XLA's cost analysis) over what the devices could do.

Accelerator peaks are the published dense matmul rates per chip. TPUs multiply float32 by default in bfloat16
passes, so their float32 peak is the bfloat16 one; NVIDIA GPUs multiply float32 as TF32 by default, so theirs is
the TF32 rate. On a CPU, or a device not in the table, the peak is a large matmul measured once at start-up.
"""

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# device_kind substring -> (bfloat16, float32) peak FLOP/s per chip. Longer keys are matched first.
PEAK_FLOPS: dict[str, tuple[float, float]] = {
  "TPU v4": (275e12, 275e12),
  "TPU v5 lite": (197e12, 197e12),
  "TPU v5e": (197e12, 197e12),
  "TPU v5p": (459e12, 459e12),
  "TPU v5": (459e12, 459e12),
  "TPU v6 lite": (918e12, 918e12),
  "TPU v6e": (918e12, 918e12),
  "A100": (312e12, 156e12),
  "H100 PCIe": (756e12, 378e12),
  "H100": (989e12, 494.7e12),
  "H200": (989e12, 494.7e12),
}


def table_peak(device_kind: str, dtype: str) -> float | None:
  """The published peak of one chip called `device_kind` for `dtype` ("bfloat16" or "float32"), if known."""
  for key in sorted(PEAK_FLOPS, key=len, reverse=True):
    if key in device_kind:
      bf16, fp32 = PEAK_FLOPS[key]
      return bf16 if dtype == "bfloat16" else fp32
  return None


@functools.cache
def measured_peak(dtype: str, *, size: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of the fastest of `repeats` (size x size) @ (size x size) matmuls on the first local device."""
  a = jax.device_put(jnp.ones((size, size), dtype), jax.local_devices()[0])
  matmul = jax.jit(jnp.dot)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


def job_peak(dtype: str) -> float:
  """Peak FLOP/s of the whole job: every device's published peak, or on the CPU the measured host peak times
  the number of processes (simulated CPU devices share one host's cores)."""
  device = jax.devices()[0]
  peak = table_peak(device.device_kind, dtype)
  if peak is not None:
    return peak * jax.device_count()
  if device.platform == "cpu":
    return measured_peak(dtype) * jax.process_count()
  return measured_peak(dtype) * jax.device_count()


def lowered_flops(step: Callable, *args: Any) -> float:
  """FLOPs of one call of the jitted or pmapped `step` on `args` (arrays or abstract arrays), by XLA's cost
  analysis of the lowered program: the whole computation under jit, one device's share under pmap."""
  analysis = step.lower(*args).cost_analysis()
  if isinstance(analysis, list | tuple):
    analysis = analysis[0]
  return float(analysis.get("flops", 0.0)) if analysis else 0.0
