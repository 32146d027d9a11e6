"""Domain adaptation: the gradient reversal layer and Ganin's schedule, the two-stream input with exact resume,
the synthetic digits shifts, and the objective's heads kept, trained and checkpointed beside (not in) the model."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitjax import checkpoints, data, losses, models, transfer
from vitjax.configs import common
from vitjax.data import shifts
from vitjax.train import adaptation, objectives, state, steps


def test_gradient_reversal_is_the_identity_forward_and_minus_lambda_times_the_gradient_backward():
  x = jax.random.normal(jax.random.key(0), (3, 5))
  cotangent = jax.random.normal(jax.random.key(1), (3, 5))
  out, vjp = jax.vjp(adaptation.reverse_gradient, x, jnp.float32(0.7))
  grad_x, grad_strength = vjp(cotangent)
  np.testing.assert_array_equal(out, x)
  np.testing.assert_allclose(grad_x, -0.7 * cotangent, rtol=1e-6)
  assert grad_strength == 0.0
  # Through a loss: the reversed gradient is minus lambda times the plain one.
  w = jnp.arange(5.0)
  plain = jax.grad(lambda v: jnp.sum(jnp.tanh(v @ w)))(x)
  reversed_ = jax.grad(lambda v: jnp.sum(jnp.tanh(adaptation.reverse_gradient(v, 0.3) @ w)))(x)
  np.testing.assert_allclose(reversed_, -0.3 * plain, rtol=1e-6)


def test_ganin_schedule():
  assert adaptation.ganin_lambda(0.0) == 0.0
  np.testing.assert_allclose(adaptation.ganin_lambda(1.0), 2 / (1 + math.exp(-10)) - 1, rtol=1e-6)
  np.testing.assert_allclose(adaptation.ganin_lambda(0.1), 2 / (1 + math.exp(-1)) - 1, rtol=1e-6)
  values = adaptation.ganin_lambda(jnp.linspace(0, 1, 11))
  assert jnp.all(jnp.diff(values) > 0)


def test_shifts_are_deterministic_per_example_and_change_the_digit():
  digit = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
  for name in shifts.SHIFTS:
    first, again, other = (shifts.shift_image(name, digit, i) for i in (3, 3, 4))
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, shifts._grey(shifts.upscale(digit)))
    if name != "inverted":  # Inversion has no randomness; the others differ from example to example.
      assert not np.array_equal(first, other)
  np.testing.assert_array_equal(shifts.shift_image("inverted", digit, 0)[..., 0], 255 - shifts.upscale(digit))
  with pytest.raises(ValueError, match="Unknown digits shift 'blurred'; choose one of: inverted, rotated"):
    shifts.shift_image("blurred", digit, 0)


def _data_config(data_dir):
  config = common.get_base_config().data
  config.update(data_dir=data_dir, target="vitjax_digits_inverted", cache=True)
  config.pp_train = "pad_and_crop(1)|resize(32, method='nearest')|to_rgb|value_range(-1, 1)"
  config.target_pp = "flip_lr|value_range(-1, 1)"
  return config


def _stream(source, target, config, start_batch, count):
  kwargs = dict(batch_size=8, start_batch=start_batch)
  ds = data.with_target(
    data.train_dataset(source, config, seed=1, **kwargs),
    data.train_dataset(target, data.target_config(config), seed=2, **kwargs),
  )
  return [batch for _, batch in zip(range(count), data.as_numpy(ds))]


def test_two_streams_resume_exactly_where_they_stopped(digits_dir):
  config = _data_config(digits_dir)
  source, target = data.from_config(config), data.target_from_config(config)
  target.prepare()
  straight = _stream(source, target, config, 0, 4)
  resumed = _stream(source, target, config, 2, 2)
  assert set(straight[0]) == {"image", "labels", "target_image"}
  assert straight[0]["target_image"].shape == straight[0]["image"].shape == (8, 32, 32, 3)
  for a, b in zip(straight[2:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # The inverted digits are mostly white, the clean ones mostly black: the second stream is the target.
  assert straight[0]["target_image"].mean() > 0 > straight[0]["image"].mean()
  assert data.target_from_config(common.get_base_config().data) is None


def _tiny(objective_name="dann"):
  config = common.get_base_config()
  config.model.update(name="vit_micro8", classifier="gap", posemb="sincos2d")
  config.objective, config.data.target = objective_name, "vitjax_digits_inverted"
  setting = objectives.Setting(losses.from_config(config.loss), 10, (16, 16, 3), num_steps=10)
  model = models.from_config(config.model, num_classes=10)
  objective = objectives.from_config(config, setting)
  tx = optax.adam(1e-2)
  init = functools.partial(
    state.create_train_state,
    model,
    tx,
    image_shape=(16, 16, 3),
    heads_init=objectives.heads_init(objective),
    heads_tx=tx,
  )
  train_state = jax.jit(init)(jax.random.key(0))
  return config, model, objective, train_state


def _batch(rng=0):
  keys = jax.random.split(jax.random.key(rng), 3)
  return {
    "image": jax.random.normal(keys[0], (8, 16, 16, 3)),
    "target_image": jax.random.normal(keys[1], (8, 16, 16, 3)) + 1.0,
    "labels": jax.nn.one_hot(jax.random.randint(keys[2], (8,), 0, 10), 10),
  }


def test_objective_heads_train_beside_the_model_are_checkpointed_and_stay_out_of_its_params(tmp_path):
  config, model, objective, train_state = _tiny()
  model_keys = set(models.init_variables(model, jax.random.key(1), image_shape=(16, 16, 3))["params"])
  assert set(train_state.params) == model_keys and set(train_state.objective_params) == {"hidden_0", "hidden_1", "out"}
  step = jax.jit(steps.make_train_step(objective=objective, learning_rate_fn=lambda s: 1e-2))
  new_state, metrics = step(train_state, _batch(), jax.random.key(2))
  assert {"domain_loss", "domain_accuracy", "grl_lambda", "objective_grad_norm"} <= set(metrics)
  moved = jax.tree.map(
    lambda a, b: float(jnp.abs(a - b).max()), new_state.objective_params, train_state.objective_params
  )
  assert min(jax.tree.leaves(moved)) > 0 and set(new_state.params) == model_keys
  # Saved with the state, restored exactly; the run's params (what eval, export and transfer read) are the model's.
  workdir = str(tmp_path)
  manager = checkpoints.create_manager(workdir)
  checkpoints.save(manager, new_state, step=1, meta={"step": 1})
  manager.wait_until_finished()
  checkpoints.write_run_info(workdir, config, [str(i) for i in range(10)])
  restored, _ = checkpoints.restore_latest(manager, jax.eval_shape(lambda: new_state))
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(new_state)):
    np.testing.assert_array_equal(a, b)
  run = checkpoints.load_run(workdir)
  assert set(run.params) == model_keys
  loaded = transfer.load_pretrained(workdir, jax.device_get(train_state.params))
  np.testing.assert_array_equal(loaded["embedding"]["kernel"], new_state.params["embedding"]["kernel"])


def test_source_only_ignores_the_target_but_measures_it():
  _, _, objective, train_state = _tiny("source_only")
  assert objectives.heads_init(objective) is None and train_state.objective_params is None
  forward = objectives.Forward(train_state.apply_fn, {})
  batch = _batch()

  @jax.jit
  def gradients_and_metrics(params, batch):
    loss_fn = lambda p: objective(forward, p, batch, jax.random.key(0))  # noqa: E731
    return jax.grad(lambda p: loss_fn(p)[0])(params), loss_fn(params)[1]

  grads, metrics = gradients_and_metrics(train_state.params, batch)
  other_grads, _ = gradients_and_metrics(train_state.params, {**batch, "target_image": batch["target_image"] * 5.0})
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(other_grads)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(metrics["target_entropy"], math.log(10), rtol=1e-5)  # The zero head: uniform.
  assert metrics["feature_gap"] > 0


def test_adaptation_objectives_need_a_target():
  config = common.get_base_config()
  config.objective = "dann"
  setting = objectives.Setting(losses.from_config(config.loss), 10, (16, 16, 3))
  with pytest.raises(ValueError, match="config.objective='dann' needs config.data.target"):
    objectives.from_config(config, setting)
