"""jit data-parallel, jit fsdp and pmap on 8 simulated devices agree with one device on the same global batch."""

import functools

import jax
import numpy as np
import pytest

from tests.support import checkpoint_params, optimizer_config, tiny_config
from vitjax import losses, models, sharding
from vitjax.train import loop, objectives, optim, steps
from vitjax.train.state import create_train_state


def _run(parallelism: str, *, devices, fsdp: int = 1, num_steps: int = 3):
  model = models.build("vit_micro8", num_classes=10)
  # SGD keeps float32 reduction-order differences at their size; Adam would blow up those of near-zero gradients.
  config = optimizer_config(momentum=0.9, nesterov=True, weight_decay=1e-3)
  tx, schedule = optim.from_config(config, total_steps=num_steps)
  init = functools.partial(create_train_state, model, tx, image_shape=(16, 16, 3), ema=True)
  abstract = jax.eval_shape(init, jax.random.key(0))
  parallel = sharding.create(parallelism, sharding.make_mesh(fsdp=fsdp, devices=devices), abstract)
  state = parallel.from_checkpoint(parallel.init(init, jax.random.key(0)))
  axis = sharding.PMAP_AXIS if parallelism == "pmap" else None
  step = parallel.train_step(
    steps.make_train_step(
      objective=objectives.supervised(losses.softmax_cross_entropy),
      learning_rate_fn=schedule,
      ema_decay=0.9,
      axis_name=axis,
    )
  )
  rng = np.random.default_rng(0)
  losses_seen = []
  for _ in range(num_steps):
    batch = {
      "image": rng.uniform(-1, 1, (16, 16, 16, 3)).astype(np.float32),
      "labels": np.eye(10, dtype=np.float32)[rng.integers(0, 10, 16)],
    }
    state, metrics = step(state, parallel.place_batch(batch), jax.random.key(1))
    losses_seen.append(float(parallel.host_metrics(metrics)["loss"]))
  return jax.device_get(parallel.to_checkpoint(state)), losses_seen, parallel


@pytest.fixture(scope="module")
def single_device():
  return _run("jit", devices=jax.devices()[:1])


@pytest.mark.parametrize("parallelism, fsdp", [("jit", 1), ("jit", 4), ("jit", -1), ("pmap", 1)])
def test_matches_single_device(single_device, parallelism, fsdp):
  assert jax.device_count() == 8
  reference_state, reference_losses, _ = single_device
  state, step_losses, parallel = _run(parallelism, devices=jax.devices(), fsdp=fsdp)
  np.testing.assert_allclose(step_losses, reference_losses, rtol=1e-5)
  for name in ("params", "ema_params", "opt_state"):
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      getattr(state, name),
      getattr(reference_state, name),
    )
  if fsdp != 1:  # The largest divisible dimension of each big parameter really is split.
    kernel = parallel.state_sharding.params["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"]
    assert kernel.spec == sharding.P(None, sharding.FSDP_AXIS)


def test_fsdp_spec_picks_the_largest_divisible_dimension():
  assert sharding.fsdp_spec((768, 3072), 8) == sharding.P(None, "fsdp")
  assert sharding.fsdp_spec((16, 16, 3, 768), 4) == sharding.P(None, None, None, "fsdp")
  assert sharding.fsdp_spec((3,), 4) == sharding.P()
  assert sharding.fsdp_spec((768, 3072), 1) == sharding.P()


def test_pmap_training_loop_matches_jit(digits_dir, tmp_path):
  results = {}
  for parallelism in ("jit", "pmap"):
    config = tiny_config(digits_dir, parallelism=parallelism, total_steps=4)
    config.log_every = config.eval_every = config.checkpoint_every = 2
    results[parallelism] = loop.train_and_evaluate(config, str(tmp_path / parallelism))
  assert results["jit"]["loss"] == pytest.approx(results["pmap"]["loss"], rel=1e-4)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
    checkpoint_params(str(tmp_path / "jit")),
    checkpoint_params(str(tmp_path / "pmap")),
  )
