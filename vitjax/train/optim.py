"""Optax recipes: schedules, optimizers, clipping, weight-decay masks, layer-wise learning rates, freezing."""

import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from vitjax import models
from vitjax.errors import ConfigError

SCHEDULES = ("cosine", "linear", "constant", "rsqrt", "step")
OPTIMIZERS = ("sgd", "adam", "adamw", "lamb")
WEIGHT_DECAY_MODES = ("decoupled", "l2")

# Parameters that are never decayed: biases, norm scales, position embeddings and class/probe tokens.
NO_DECAY_PATTERN = r"(^|/)(bias|scale|gamma|beta|pos_embedding|cls|probe)$"


def create_learning_rate_fn(
  config: ml_collections.ConfigDict, *, base_learning_rate: float, total_steps: int
) -> optax.Schedule:
  """Linear warmup from 0 to ``base_learning_rate`` over ``warmup_steps(config, total_steps)``, then the configured
  decay."""
  warmup = warmup_steps(config, total_steps)
  decay_steps = max(total_steps - warmup, 1)
  name = config.name
  end = config.end_value
  if name == "cosine":
    alpha = end / base_learning_rate if base_learning_rate else 0.0
    decay = optax.cosine_decay_schedule(base_learning_rate, decay_steps, alpha=alpha)
  elif name == "linear":
    decay = optax.linear_schedule(base_learning_rate, end, decay_steps)
  elif name == "constant":
    decay = optax.constant_schedule(base_learning_rate)
  elif name == "rsqrt":
    timescale = config.timescale
    decay = lambda count: base_learning_rate * jax.lax.rsqrt(1.0 + count / timescale)  # noqa: E731
  elif name == "step":
    boundaries = {int(b * total_steps) - warmup: config.decay_factor for b in config.boundaries}
    decay = optax.piecewise_constant_schedule(base_learning_rate, boundaries)
  else:
    raise ConfigError(f"Unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}.")
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, base_learning_rate, warmup), decay], [warmup])


def warmup_steps(config: ml_collections.ConfigDict, total_steps: int, *, warn: bool = False) -> int:
  """The warmup of schedule ``config`` in a run of ``total_steps``: ``warmup_fraction`` of the run when set, else
  ``warmup_steps`` cut to ``max_warmup_fraction`` of the run, so that a shortened run still reaches its peak rate and
  decays. ``warn`` logs one line when the cut applies, saying what was set and what to set."""
  fraction, steps = config.get("warmup_fraction") or 0.0, config.warmup_steps
  if not 0.0 <= fraction < 1.0:
    raise ConfigError(f"config.schedule.warmup_fraction={fraction} must be in [0, 1): the share of the run to warm up.")
  if fraction and steps:
    raise ConfigError(
      f"config.schedule.warmup_steps={steps} and warmup_fraction={fraction} are both set: set one, the other to 0."
    )
  if fraction:
    return round(fraction * total_steps)
  max_fraction = config.get("max_warmup_fraction", 1.0)
  cap = math.floor(max_fraction * total_steps)
  if steps <= cap:
    return steps
  if warn:
    logging.warning(
      "config.schedule.warmup_steps=%d is over max_warmup_fraction=%g of this run's %d steps: warming up over %d "
      "steps; set --config.schedule.warmup_fraction=F (a share of the run) or warmup_steps=N (N <= %d) to choose.",
      steps,
      max_fraction,
      total_steps,
      cap,
      cap,
    )
  return cap


def path_name(path: tuple[Any, ...]) -> str:
  """``'Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel'`` from a pytree key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def map_names(fn, tree: Any) -> Any:
  """Maps ``fn(name, leaf)`` over a parameter tree, ``name`` being the '/'-joined path."""
  return jax.tree_util.tree_map_with_path(lambda path, leaf: fn(path_name(path), leaf), tree)


def weight_decay_mask(params: Any, pattern: str = NO_DECAY_PATTERN) -> Any:
  """True for the parameters that take weight decay: everything whose name does not match ``pattern``."""
  return map_names(lambda name, _: re.search(pattern, name) is None, params)


def layerwise_scales(params: Any, decay: float, groups: models.LayerGroups) -> Any:
  """Learning-rate multipliers ``decay ** (top - depth)``, depths as the model family's layer ``groups`` say: the
  head learns at full rate, each block or stage below it ``decay`` times slower, the stem slowest."""
  names = [path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  num_layers = max((d for d in map(groups.block_depth, names) if d is not None), default=0)
  return map_names(lambda name, _: decay ** (num_layers + 1 - groups.layer_index(name, num_layers)), params)


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
  """Multiplies every update by a fixed per-parameter factor (layer-wise learning rates)."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def frozen_mask(params: Any, pattern: str | None) -> Any:
  """True for the parameters whose name matches the ``freeze`` regex."""
  return map_names(lambda name, _: bool(pattern) and re.search(pattern, name) is not None, params)


def _core(opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer's preconditioning, before weight decay and the learning rate."""
  if opt.name == "sgd":
    momentum = opt.momentum
    return optax.trace(decay=momentum, nesterov=opt.nesterov) if momentum else optax.identity()
  if opt.name in ("adam", "adamw", "lamb"):
    return optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps or (1e-6 if opt.name == "lamb" else 1e-8))
  raise ConfigError(f"Unknown optimizer {opt.name!r}; choose one of: {', '.join(OPTIMIZERS)}.")


def from_config(
  config: ml_collections.ConfigDict, *, total_steps: int, params: Any | None = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer of ``config.optimizer`` with ``config.schedule``; returns it with its schedule.

  Order: clip the global gradient norm, precondition (momentum / Adam moments), weight decay (as L2 on the
  gradient before preconditioning, or decoupled after it), trust ratio (LAMB), learning rate, layer-wise scale.
  ``params`` (shapes suffice) is needed for layer-wise learning rates.
  """
  opt = config.optimizer
  schedule = create_learning_rate_fn(config.schedule, base_learning_rate=opt.learning_rate, total_steps=total_steps)
  weight_decay = opt.weight_decay
  mode = opt.weight_decay_mode
  if mode not in WEIGHT_DECAY_MODES:
    raise ConfigError(f"Unknown weight_decay_mode {mode!r}; choose one of: {', '.join(WEIGHT_DECAY_MODES)}.")
  decay = optax.add_decayed_weights(weight_decay, mask=weight_decay_mask) if weight_decay else optax.identity()
  parts = [
    optax.clip_by_global_norm(opt.grad_clip_norm) if opt.grad_clip_norm else optax.identity(),
    decay if mode == "l2" else optax.identity(),
    _core(opt),
    decay if mode == "decoupled" else optax.identity(),
    optax.scale_by_trust_ratio() if opt.name == "lamb" else optax.identity(),
    optax.scale_by_learning_rate(schedule),
  ]
  layerwise_decay = opt.layerwise_decay
  if layerwise_decay != 1.0:
    if params is None:
      raise ValueError("optimizer.layerwise_decay needs the parameter tree: pass params to optim.from_config.")
    groups = models.layer_groups(config.model.name)
    parts.append(scale_by_tree(layerwise_scales(params, layerwise_decay, groups)))
  tx = optax.chain(*parts)
  freeze = opt.freeze
  if freeze:
    if params is None:
      raise ValueError("optimizer.freeze needs the parameter tree: pass params to optim.from_config.")
    labels = map_names(lambda name, _: "frozen" if re.search(freeze, name) else "trained", params)
    if "trained" not in jax.tree.leaves(labels):
      raise ConfigError(f"optimizer.freeze={freeze!r} matches every parameter: nothing would train.")
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule
