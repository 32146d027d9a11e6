"""Train and eval steps: pure functions of (state, batch, rng), compiled by the caller (jit or pmap)."""

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from clu import metrics
from flax.training import train_state

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


class TrainState(train_state.TrainState):
  """Params, optimizer state and step, BatchNorm statistics (empty for models without them) and, when enabled,
  an exponential moving average of the parameters (None otherwise)."""

  batch_stats: Any = flax.core.FrozenDict()
  ema_params: Any = None


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  accuracy: metrics.Accuracy
  loss: metrics.Average.from_output("loss")


def variables(params, batch_stats) -> dict[str, Any]:
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def _microbatches(batch: dict[str, jax.Array], accum_steps: int) -> dict[str, jax.Array]:
  """(B, ...) -> (accum_steps, B / accum_steps, ...), microbatch k taking rows k, k + accum_steps, ...

  Interleaving keeps each microbatch spread over all devices of a batch-sharded array: no data moves.
  """

  def split(x):
    return x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)

  return jax.tree.map(split, batch)


def make_train_step(
  *,
  loss_fn: LossFn,
  learning_rate_fn: optax.Schedule,
  accum_steps: int = 1,
  ema_decay: float = 0.0,
  axis_name: str | None = None,
  teacher_fn: Callable[[jax.Array], jax.Array] | None = None,
) -> Callable:
  """Returns ``train_step(state, batch, rng) -> (state, metrics)`` for a per-example ``loss_fn``.

  With a ``teacher_fn`` (images -> teacher logits, for distillation) the loss is
  ``loss_fn(logits, labels, teacher_fn(images))``, the teacher seeing the very images the student sees.

  With ``accum_steps > 1`` the batch is processed as that many microbatches whose gradients are averaged,
  equal to one step on the whole batch (BatchNorm statistics are updated microbatch after microbatch).
  ``axis_name`` names the pmap axis to average gradients and metrics over; under jit it stays None.
  """

  def loss_and_grads(apply_fn, params, batch_stats, batch, rng):
    def compute_loss(params):
      mutable = ["batch_stats"] if batch_stats else False
      result = apply_fn(
        variables(params, batch_stats), batch["image"], train=True, rngs={"dropout": rng}, mutable=mutable
      )
      logits, new_vars = result if batch_stats else (result, {})
      if teacher_fn is None:
        loss = loss_fn(logits, batch["labels"]).mean()
      else:
        loss = loss_fn(logits, batch["labels"], teacher_fn(batch["image"])).mean()
      return loss, (logits, new_vars.get("batch_stats", batch_stats))

    return jax.value_and_grad(compute_loss, has_aux=True)(params)

  def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:  # Different dropout on every device.
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    if accum_steps == 1:
      (loss, (logits, batch_stats)), grads = loss_and_grads(state.apply_fn, state.params, state.batch_stats, batch, rng)
      correct = jnp.argmax(logits, -1) == jnp.argmax(batch["labels"], -1)
    else:

      def accumulate(carry, xs):
        grads_sum, loss_sum, batch_stats = carry
        micro, index = xs
        (loss, (logits, batch_stats)), grads = loss_and_grads(
          state.apply_fn, state.params, batch_stats, micro, jax.random.fold_in(rng, index)
        )
        correct = jnp.argmax(logits, -1) == jnp.argmax(micro["labels"], -1)
        return (jax.tree.map(jnp.add, grads_sum, grads), loss_sum + loss, batch_stats), correct

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, loss, batch_stats), correct = jax.lax.scan(
        accumulate, (zeros, 0.0, state.batch_stats), (_microbatches(batch, accum_steps), jnp.arange(accum_steps))
      )
      grads = jax.tree.map(lambda g: g / accum_steps, grads)
      loss = loss / accum_steps
    accuracy = jnp.mean(correct)
    if axis_name is not None:
      grads, loss, accuracy, batch_stats = jax.lax.pmean((grads, loss, accuracy, batch_stats), axis_name)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if ema_decay:
      new_state = new_state.replace(
        ema_params=jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, new_state.params)
      )
    step_metrics = {
      "loss": loss,
      "accuracy": accuracy,
      "learning_rate": learning_rate_fn(state.step),
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(new_state.params),
    }
    return new_state, step_metrics

  return train_step


def make_eval_step(*, loss_fn: LossFn, use_ema: bool = False, axis_name: str | None = None) -> Callable:
  """Returns ``eval_step(state, batch) -> EvalMetrics``; examples with ``mask == 0`` are padding and ignored."""

  def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> EvalMetrics:
    params = state.ema_params if use_ema else state.params
    logits = state.apply_fn(variables(params, state.batch_stats), batch["image"], train=False)
    kwargs = dict(
      logits=logits.astype(jnp.float32),
      labels=jnp.argmax(batch["labels"], -1),
      loss=loss_fn(logits, batch["labels"]),
      mask=batch["mask"],
    )
    if axis_name is not None:
      return EvalMetrics.gather_from_model_output(axis_name=axis_name, **kwargs)
    return EvalMetrics.single_from_model_output(**kwargs)

  return eval_step
