"""The train state: parameters, optimizer state, step, BatchNorm statistics and the parameters' moving average."""

from typing import Any

import flax
import jax
import optax
from flax import linen as nn
from flax.training import train_state

from vitjax import models


class TrainState(train_state.TrainState):
  """Params, optimizer state and step, BatchNorm statistics (empty for models without them) and, when enabled,
  an exponential moving average of the parameters (None otherwise)."""

  batch_stats: Any = flax.core.FrozenDict()
  ema_params: Any = None


def variables(params: Any, batch_stats: Any) -> dict[str, Any]:
  """`model.apply` variables: BatchNorm statistics only for models that have them."""
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def create_train_state(
  model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, *, image_shape: tuple[int, ...], ema: bool = False
) -> TrainState:
  """The initial state of `model` at `rng`; `ema` starts the moving average at the initial parameters."""
  model_variables = models.init_variables(model, rng, image_shape=image_shape)
  params = model_variables["params"]
  return TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=tx,
    batch_stats=model_variables.get("batch_stats", {}),
    ema_params=params if ema else None,
  )
