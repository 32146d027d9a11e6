"""Model cost and size reports: forward FLOPs from XLA's cost analysis, clu's parameter table."""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from clu import parameter_overview as clu_parameter_overview


def forward_gflops(
  model: nn.Module, *, image_size: int = 224, image_shape: tuple[int, ...] | None = None, batch_size: int = 1
) -> float:
  """GFLOPs per image of the compiled inference forward pass (`train=False`), as XLA counts them, on RGB squares of
  `image_size` or on inputs of `image_shape` (a run's own: its channels, or NaFlex's packed patches).

  Only abstract shapes are used (nothing is allocated); a multiply-add counts as 2 FLOPs.
  """
  images = jax.ShapeDtypeStruct((batch_size, *(image_shape or (image_size, image_size, 3))), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  cost = forward.lower(variables, images).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax returned one dict per computation.
    cost = cost[0]
  return float(cost["flops"]) / batch_size / 1e9


def parameter_overview(params: Mapping[str, Any]) -> str:
  """Table of every parameter's name, shape, dtype and size with the total, via clu."""
  return clu_parameter_overview.get_parameter_overview(params, include_stats=False)
