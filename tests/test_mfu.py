"""Model-FLOPs utilisation: step FLOPs from XLA's cost analysis, and the peaks they are divided by."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax import sharding
from vitjax.train import mfu


@pytest.mark.parametrize(
  "kind, dtype, peak",
  [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
    ("NVIDIA H100 PCIe", "float32", 378e12),
    ("NVIDIA A100-SXM4-40GB", "float32", 156e12),
    ("NVIDIA H200", "bfloat16", 989e12),
    ("TPU v5 lite", "float32", 197e12),
    ("TPU v5p", "bfloat16", 459e12),
    ("TPU v6 lite", "bfloat16", 918e12),
    ("TPU v4", "bfloat16", 275e12),
  ],
)
def test_published_peaks_by_device_kind(kind, dtype, peak):
  assert mfu.table_peak(kind, dtype) == peak


def test_unknown_devices_fall_back_to_a_measured_peak():
  assert mfu.table_peak("cpu", "float32") is None
  peak = mfu.measured_peak("float32", size=256, repeats=2)
  assert 1e8 < peak < 1e14
  assert mfu.job_peak("float32") == mfu.measured_peak("float32") * jax.process_count()


def _matmul_step(w, batch):
  return jnp.tanh(batch["image"] @ w).sum()


def test_step_flops_count_the_whole_job_under_jit_and_pmap():
  m, k, n = 64, 96, 32
  local = {"image": ((m, k), np.float32)}
  w = jnp.ones((k, n))
  expected = 2 * m * k * n  # The matmul; tanh and the sum add a few m * n more.
  mesh = sharding.make_mesh()
  abstract_w = jax.eval_shape(lambda: w)
  jit = sharding.Jit(mesh, abstract_w)
  step = jax.jit(_matmul_step, in_shardings=(jit.replicated, jit.batch))
  jit_flops = mfu.lowered_flops(step, w, jit.abstract_batch(local)) * jit.programs
  pmap = sharding.Pmap(mesh, abstract_w)
  step = jax.pmap(_matmul_step, axis_name=sharding.PMAP_AXIS, in_axes=(None, 0))
  pmap_flops = mfu.lowered_flops(step, w, pmap.abstract_batch(local)) * pmap.programs
  assert expected <= jit_flops <= expected + 4 * m * n
  assert expected <= pmap_flops <= expected + 4 * m * n
