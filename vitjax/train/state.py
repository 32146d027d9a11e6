"""The train state: parameters, optimizer state, step, BatchNorm statistics, the parameters' moving average, and
the parameters of the objective's own heads."""

from collections.abc import Callable
from typing import Any

import flax
import jax
import optax
from flax import linen as nn
from flax import struct
from flax.training import train_state

from vitjax import models

# The heads' initialiser draws from this fold of the init key, so adding heads leaves the model's init unchanged.
_HEADS_KEY = 1


class TrainState(train_state.TrainState):
  """Params, optimizer state and step, BatchNorm statistics (empty for models without them), when enabled an
  exponential moving average of the parameters (None otherwise), and the objective's heads (None without).

  `objective_params` (a domain classifier, a projection head, a decoder) train beside `params` with an optimizer
  of the same recipe and are checkpointed with them, but are no part of the model: evaluation, prediction, export
  and transfer read `params` alone.
  """

  batch_stats: Any = flax.core.FrozenDict()
  ema_params: Any = None
  objective_params: Any = None
  objective_opt_state: Any = None
  objective_tx: optax.GradientTransformation | None = struct.field(pytree_node=False, default=None)

  def apply_gradients(self, *, grads: Any, objective_grads: Any = None, **kwargs) -> "TrainState":
    """One optimizer step of the model's parameters and, given their gradients, of the objective's heads."""
    new_state = super().apply_gradients(grads=grads, **kwargs)
    if objective_grads is None:
      return new_state
    updates, opt_state = self.objective_tx.update(objective_grads, self.objective_opt_state, self.objective_params)
    return new_state.replace(
      objective_params=optax.apply_updates(self.objective_params, updates), objective_opt_state=opt_state
    )


def variables(params: Any, batch_stats: Any) -> dict[str, Any]:
  """`model.apply` variables: BatchNorm statistics only for models that have them."""
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def create_train_state(
  model: nn.Module,
  tx: optax.GradientTransformation,
  rng: jax.Array,
  *,
  image_shape: tuple[int, ...],
  ema: bool = False,
  heads_init: Callable[[jax.Array], Any] | None = None,
  heads_tx: optax.GradientTransformation | None = None,
) -> TrainState:
  """The initial state of `model` at `rng`; `ema` starts the moving average at the initial parameters;
  `heads_init(rng)` gives the objective's heads, optimised by `heads_tx`."""
  model_variables = models.init_variables(model, rng, image_shape=image_shape)
  params = model_variables["params"]
  heads = heads_init(jax.random.fold_in(rng, _HEADS_KEY)) if heads_init else None
  return TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=tx,
    batch_stats=model_variables.get("batch_stats", {}),
    ema_params=params if ema else None,
    objective_params=heads,
    objective_opt_state=heads_tx.init(heads) if heads_init else None,
    objective_tx=heads_tx if heads_init else None,
  )
