"""Schedules, optimizers and parameter groups against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tests.support import optimizer_config
from vitjax import losses, models
from vitjax.configs import common
from vitjax.train import objectives, optim, steps
from vitjax.train.state import create_train_state

_config = optimizer_config


@pytest.mark.parametrize(
  "name, step, expected",
  [
    ("cosine", 0, 0.0),
    ("cosine", 50, 0.5),
    ("cosine", 100, 1.0),
    ("cosine", 550, 0.5),
    ("cosine", 1000, 0.0),
    ("linear", 550, 0.5),
    ("linear", 1000, 0.0),
    ("constant", 700, 1.0),
    ("rsqrt", 100, 1.0),
    ("rsqrt", 100 + 30_000, 0.5),
    ("step", 299, 1.0),
    ("step", 300, 0.1),
    ("step", 600, 0.01),
    ("step", 900, 0.001),
  ],
)
def test_schedules_at_chosen_steps(name, step, expected):
  config = common.get_base_config().schedule
  config.update(name=name, warmup_steps=100, timescale=10_000)
  if name == "step":
    config.warmup_steps = 0
  schedule = optim.create_learning_rate_fn(config, base_learning_rate=1.0, total_steps=1000)
  assert float(schedule(step)) == pytest.approx(expected, abs=1e-6)


def test_cosine_midway_value_matches_the_formula():
  config = common.get_base_config().schedule
  config.update(name="cosine", warmup_steps=10, end_value=0.0)
  schedule = optim.create_learning_rate_fn(config, base_learning_rate=3.0, total_steps=110)
  assert float(schedule(10 + 25)) == pytest.approx(3.0 * 0.5 * (1 + math.cos(math.pi * 25 / 100)), rel=1e-6)


def test_weight_decay_mask_spares_biases_norms_and_embeddings():
  params = {
    "embedding": {"kernel": 1, "bias": 1},
    "cls": 1,
    "Transformer": {
      "posembed_input": {"pos_embedding": 1},
      "encoder_norm": {"scale": 1, "bias": 1},
      "encoderblock_0": {"MlpBlock_0": {"Dense_0": {"kernel": 1, "bias": 1}}},
    },
    "head": {"kernel": 1, "bias": 1},
  }
  mask = optim.weight_decay_mask(params)
  assert mask["embedding"] == {"kernel": True, "bias": False} and mask["cls"] is False
  assert mask["Transformer"]["posembed_input"]["pos_embedding"] is False
  assert mask["Transformer"]["encoder_norm"] == {"scale": False, "bias": False}
  assert mask["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"] == {"kernel": True, "bias": False}
  assert mask["head"]["kernel"] is True


def test_nesterov_matches_its_formula():
  lr, mu = 0.1, 0.9
  tx, _ = optim.from_config(_config(learning_rate=lr, momentum=mu, nesterov=True), total_steps=10)
  params = {"w": jnp.array([1.0, -2.0])}
  state = tx.init(params)
  grads = [jnp.array([0.5, 1.0]), jnp.array([-1.0, 0.25]), jnp.array([2.0, 2.0])]
  w, velocity = np.array([1.0, -2.0]), np.zeros(2)
  for g in grads:
    updates, state = tx.update({"w": g}, state, params)
    params = optax.apply_updates(params, updates)
    velocity = mu * velocity + np.asarray(g)
    w = w - lr * (np.asarray(g) + mu * velocity)  # Sutskever et al.'s Nesterov, as in PyTorch and optax.
  np.testing.assert_allclose(params["w"], w, rtol=1e-6)


def test_decoupled_and_l2_weight_decay():
  params = {"kernel": jnp.array([2.0])}
  zero = {"kernel": jnp.array([0.0])}
  for mode, expected in (("decoupled", 2.0 - 0.1 * 0.5 * 2.0), ("l2", 2.0 - 0.1 * 0.5 * 2.0)):
    tx, _ = optim.from_config(_config(weight_decay=0.5, weight_decay_mode=mode), total_steps=10)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(optax.apply_updates(params, updates)["kernel"][0]) == pytest.approx(expected)
  # Under Adam they differ: L2 goes through the moment normalisation (one step moves lr * sign), decoupled not.
  results = {}
  for mode in ("decoupled", "l2"):
    tx, _ = optim.from_config(_config(name="adam", weight_decay=0.5, weight_decay_mode=mode), total_steps=10)
    updates, _ = tx.update(zero, tx.init(params), params)
    results[mode] = float(optax.apply_updates(params, updates)["kernel"][0])
  assert results["l2"] == pytest.approx(2.0 - 0.1, rel=1e-5)
  assert results["decoupled"] == pytest.approx(2.0 - 0.1 * 0.5 * 2.0, rel=1e-5)


def test_frozen_parameters_get_no_update_and_no_state():
  params = {"backbone": {"kernel": jnp.ones((3, 3))}, "head": {"kernel": jnp.ones((3, 2))}}
  tx, _ = optim.from_config(_config(name="adam", freeze=r"^backbone/"), total_steps=10, params=params)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  assert float(jnp.abs(updates["backbone"]["kernel"]).max()) == 0.0
  assert float(jnp.abs(updates["head"]["kernel"]).min()) > 0.0
  state_sizes = sum(x.size for x in jax.tree.leaves(state) if hasattr(x, "size") and x.ndim > 0)
  assert state_sizes == 2 * 6  # Adam's two moments for the head only.
  with pytest.raises(ValueError, match="matches every parameter"):
    optim.from_config(_config(freeze=".*"), total_steps=10, params=params)


def test_layerwise_decay_scales_by_depth():
  model = models.build("vit_micro8", num_classes=10)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))["params"]
  scales = optim.layerwise_scales(params, 0.5, models.layer_groups("vit_micro8"))
  blocks = scales["Transformer"]
  assert scales["head"]["kernel"] == 1.0 and blocks["encoder_norm"]["scale"] == 1.0
  assert [blocks[f"encoderblock_{i}"]["LayerNorm_0"]["scale"] for i in range(4)] == [0.5**4, 0.5**3, 0.5**2, 0.5]
  assert scales["embedding"]["kernel"] == scales["cls"] == 0.5**5


def test_layerwise_decay_reaches_the_optimizer_through_the_model_name():
  model = models.build("resnet18", num_classes=10)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))["params"]
  params = jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype), params)
  config = _config(layerwise_decay=0.5)
  config.model.name = "resnet18"
  tx, _ = optim.from_config(config, total_steps=10, params=params)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  assert float(updates["head"]["kernel"][0, 0]) == pytest.approx(-0.1)
  assert float(updates["layer3"]["block0"]["conv1"]["kernel"][0, 0, 0, 0]) == pytest.approx(-0.1 * 0.5**2)
  assert float(updates["conv1"]["kernel"][0, 0, 0, 0]) == pytest.approx(-0.1 * 0.5**5)


def test_gradient_accumulation_equals_the_big_batch():
  model = models.build("vit_micro8", num_classes=10)
  config = _config(name="adamw", learning_rate=1e-3, weight_decay=0.1)
  tx, schedule = optim.from_config(config, total_steps=10)
  state = create_train_state(model, tx, jax.random.key(0), image_shape=(16, 16, 3))
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
    "labels": np.eye(10, dtype=np.float32)[rng.integers(0, 10, 8)],
  }
  results = []
  for accum in (1, 4):
    step = jax.jit(
      steps.make_train_step(
        objective=objectives.supervised(losses.softmax_cross_entropy), learning_rate_fn=schedule, accum_steps=accum
      )
    )
    new_state, metrics = step(state, batch, jax.random.key(1))
    results.append((new_state.params, float(metrics["loss"]), float(metrics["accuracy"])))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), results[0][0], results[1][0])
  assert results[0][1] == pytest.approx(results[1][1], rel=1e-5) and results[0][2] == results[1][2]


def _schedule(**fields) -> ml_collections.ConfigDict:
  schedule = common.get_base_config().schedule
  schedule.update(fields)
  return schedule


def test_warmup_fraction_scales_with_the_run():
  schedule = _schedule(warmup_fraction=0.1)
  for total in (100, 1000):
    learning_rates = optim.create_learning_rate_fn(schedule, base_learning_rate=1.0, total_steps=total)
    assert float(learning_rates(total // 10)) == pytest.approx(1.0) and float(learning_rates(total)) < 1e-6
    assert float(learning_rates(total // 20)) == pytest.approx(0.5)


def test_a_warmup_longer_than_its_share_of_the_run_is_cut_with_one_warning(caplog):
  schedule = _schedule(warmup_steps=200)
  assert optim.warmup_steps(schedule, 1000) == 200  # A fifth of the run: under the 25% cap, as set.
  with caplog.at_level("WARNING"):
    assert optim.warmup_steps(schedule, 117, warn=True) == 29
  (line,) = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
  assert "warmup_steps=200" in line and "117 steps" in line and "--config.schedule.warmup_fraction=" in line
  learning_rates = optim.create_learning_rate_fn(schedule, base_learning_rate=0.1, total_steps=117)
  assert float(learning_rates(29)) == pytest.approx(0.1) and float(learning_rates(117)) < 1e-7
  schedule.max_warmup_fraction = 1.0  # The cap is a setting: at 1.0 only a warmup longer than the run is cut.
  assert optim.warmup_steps(schedule, 150) == 150 and optim.warmup_steps(schedule, 300) == 200


@pytest.mark.parametrize(
  "fields, message",
  [
    ({"warmup_fraction": 1.0}, r"warmup_fraction=1.0 must be in \[0, 1\)"),
    ({"warmup_fraction": 0.1, "warmup_steps": 50}, "both set: set one, the other to 0"),
  ],
)
def test_warmup_settings_that_cannot_work_say_what_to_set(fields, message):
  with pytest.raises(ValueError, match=message):
    optim.create_learning_rate_fn(_schedule(**fields), base_learning_rate=1.0, total_steps=100)
