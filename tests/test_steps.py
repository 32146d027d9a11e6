"""Train and eval steps on a fixed batch of real digits."""

import jax
import numpy as np

from tests.support import optimizer_config
from vitjax import data, losses, models
from vitjax.configs import common
from vitjax.train import objectives, optim, steps
from vitjax.train.state import create_train_state


def _state_and_batch(digits_dir, *, learning_rate=3e-3):
  builder = data.builder_by_name("vitjax_digits", data_dir=digits_dir)
  data_config = common.get_base_config().data
  data_config.pp_train = "resize(32)|to_rgb|value_range(-1, 1)"
  batch = next(data.as_numpy(data.train_dataset(builder, data_config, batch_size=32, seed=0)))
  model = models.build("vit_micro8", num_classes=10)
  config = optimizer_config(name="adamw", learning_rate=learning_rate)
  tx, schedule = optim.from_config(config, total_steps=10)
  state = create_train_state(model, tx, jax.random.key(0), image_shape=(32, 32, 3))
  return state, batch, schedule


def test_train_steps_lower_the_loss_on_a_fixed_batch(digits_dir):
  state, batch, schedule = _state_and_batch(digits_dir)
  train_step = jax.jit(
    steps.make_train_step(objective=objectives.supervised(losses.softmax_cross_entropy), learning_rate_fn=schedule)
  )
  rng = jax.random.key(1)
  history = []
  for _ in range(8):
    state, metrics = train_step(state, batch, rng)
    history.append(float(metrics["loss"]))
  assert int(state.step) == 8
  assert history[0] > 2.0  # About log(10) at initialisation: the head starts at zero.
  assert history[-1] < 0.7 * history[0]
  assert np.isclose(float(metrics["learning_rate"]), 3e-3) and float(metrics["grad_norm"]) > 0
