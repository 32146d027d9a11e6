"""Train and eval steps: pure functions of (state, batch, rng), compiled by the caller."""

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from clu import metrics
from flax.training import train_state


class TrainState(train_state.TrainState):
  """Params, optimizer state and step, plus BatchNorm statistics (an empty dict for models without them)."""
  batch_stats: Any = flax.core.FrozenDict()


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  accuracy: metrics.Accuracy
  loss: metrics.Average.from_output("loss")


def _variables(params, batch_stats) -> dict[str, Any]:
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def make_train_step(*, loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
                    learning_rate_fn: optax.Schedule) -> Callable:
  """Returns ``train_step(state, batch, rng) -> (state, metrics)`` for a per-example ``loss_fn``."""

  def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
    dropout_rng = jax.random.fold_in(rng, state.step)
    has_batch_stats = bool(state.batch_stats)

    def compute_loss(params):
      out = state.apply_fn(_variables(params, state.batch_stats), batch["image"], train=True,
                           rngs={"dropout": dropout_rng}, mutable=["batch_stats"] if has_batch_stats else False)
      logits, new_model_state = out if has_batch_stats else (out, {})
      loss = loss_fn(logits, batch["labels"]).mean()
      return loss, (logits, new_model_state)

    (loss, (logits, new_model_state)), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=new_model_state.get("batch_stats", state.batch_stats))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(batch["labels"], -1))
    step_metrics = {"loss": loss, "accuracy": accuracy, "learning_rate": learning_rate_fn(state.step),
                    "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(new_state.params)}
    return new_state, step_metrics

  return train_step


def make_eval_step(*, loss_fn: Callable[[jax.Array, jax.Array], jax.Array]) -> Callable:
  """Returns ``eval_step(state, batch) -> EvalMetrics``; examples with ``mask == 0`` are padding and ignored."""

  def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> EvalMetrics:
    logits = state.apply_fn(_variables(state.params, state.batch_stats), batch["image"], train=False)
    return EvalMetrics.single_from_model_output(
        logits=logits.astype(jnp.float32), labels=jnp.argmax(batch["labels"], -1),
        loss=loss_fn(logits, batch["labels"]), mask=batch["mask"])

  return eval_step
