"""Train and eval steps: pure functions of (state, batch, rng), compiled by the caller (jit or pmap).

What the train step minimises is its `objective` (objectives.py); the step owns what every objective shares:
gradient accumulation, averaging over pmap devices, the optimizer update, the parameters' moving average, and the
learning rate and norms it reports.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from vitjax.train import objectives
from vitjax.train.objectives import Forward, HeadObjective, Objective
from vitjax.train.state import TrainState

Batch = dict[str, jax.Array]


def _microbatches(batch: Batch, accum_steps: int) -> Batch:
  """(B, ...) -> (accum_steps, B / accum_steps, ...), microbatch k taking rows k, k + accum_steps, ...

  Interleaving keeps each microbatch spread over all devices of a batch-sharded array: no data moves.
  """

  def split(x):
    return x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)

  return jax.tree.map(split, batch)


def _gradients(objective: Objective | HeadObjective, state: TrainState, batch_stats: Any, batch: Batch, rng: jax.Array):
  """(gradients of (model params, objective heads), metrics with the loss, updated BatchNorm statistics) of
  `objective` on one (micro)batch; the heads' gradients are None for an objective without heads."""

  def loss_fn(trainable):
    params, heads = trainable
    forward = Forward(state.apply_fn, batch_stats)
    loss, metrics, new_batch_stats = objectives.evaluate(objective, forward, params, heads, batch, rng, state.step)
    return loss, ({"loss": loss, **metrics}, new_batch_stats)

  trainable = (state.params, state.objective_params)
  (_, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
  return grads, metrics, batch_stats


def _accumulated_gradients(
  objective: Objective | HeadObjective, state: TrainState, batch: Batch, rng: jax.Array, accum_steps: int
):
  """`_gradients` averaged over `accum_steps` microbatches: equal to one step on the whole batch (BatchNorm
  statistics are updated microbatch after microbatch)."""

  def accumulate(carry, xs):
    grads_sum, batch_stats = carry
    micro, index = xs
    grads, metrics, batch_stats = _gradients(objective, state, batch_stats, micro, jax.random.fold_in(rng, index))
    return (jax.tree.map(jnp.add, grads_sum, grads), batch_stats), metrics

  zeros = jax.tree.map(jnp.zeros_like, (state.params, state.objective_params))
  xs = (_microbatches(batch, accum_steps), jnp.arange(accum_steps))
  (grads, batch_stats), metrics = jax.lax.scan(accumulate, (zeros, state.batch_stats), xs)
  mean = lambda x: x.mean(axis=0)
  return jax.tree.map(lambda g: g / accum_steps, grads), jax.tree.map(mean, metrics), batch_stats


def make_train_step(
  *,
  objective: Objective | HeadObjective,
  learning_rate_fn: optax.Schedule,
  accum_steps: int = 1,
  ema_decay: float = 0.0,
  axis_name: str | None = None,
) -> Callable:
  """Returns `train_step(state, batch, rng) -> (state, metrics)` minimising `objective`.

  With `accum_steps > 1` the batch is processed as that many microbatches whose gradients are averaged.
  `axis_name` names the pmap axis to average gradients and metrics over; under jit it stays None.
  """

  def train_step(state: TrainState, batch: Batch, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:  # Different dropout on every device.
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    if accum_steps == 1:
      grads, metrics, batch_stats = _gradients(objective, state, state.batch_stats, batch, rng)
    else:
      grads, metrics, batch_stats = _accumulated_gradients(objective, state, batch, rng, accum_steps)
    if axis_name is not None:
      grads, metrics, batch_stats = jax.lax.pmean((grads, metrics, batch_stats), axis_name)
    grads, objective_grads = grads
    new_state = state.apply_gradients(grads=grads, objective_grads=objective_grads, batch_stats=batch_stats)
    if ema_decay:
      ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, new_state.params)
      new_state = new_state.replace(ema_params=ema)
    metrics = {
      **metrics,
      "learning_rate": learning_rate_fn(state.step),
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(new_state.params),
    }
    if objective_grads is not None:
      metrics["objective_grad_norm"] = optax.tree.norm(objective_grads)
    return new_state, metrics

  return train_step
