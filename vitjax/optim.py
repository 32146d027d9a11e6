"""Optax recipes: learning-rate schedules, optimizers, gradient clipping and weight-decay masks."""

import re
from typing import Any

import jax
import ml_collections
import optax

SCHEDULES = ("cosine", "linear", "constant", "rsqrt", "step")
OPTIMIZERS = ("sgd", "adam", "adamw", "lamb")

# Parameters that are never decayed: biases, norm scales, position embeddings and class/probe tokens.
NO_DECAY_PATTERN = r"(^|/)(bias|scale|gamma|beta|pos_embedding|cls|probe)$"


def create_learning_rate_fn(config: ml_collections.ConfigDict, *, base_learning_rate: float,
                            total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to ``base_learning_rate`` over ``warmup_steps``, then the configured decay."""
  warmup = config.get("warmup_steps", 0)
  decay_steps = max(total_steps - warmup, 1)
  name = config.get("name", "cosine")
  end = config.get("end_value", 0.0)
  if name == "cosine":
    decay = optax.cosine_decay_schedule(base_learning_rate, decay_steps, alpha=end / base_learning_rate)
  elif name == "linear":
    decay = optax.linear_schedule(base_learning_rate, end, decay_steps)
  elif name == "constant":
    decay = optax.constant_schedule(base_learning_rate)
  elif name == "rsqrt":
    timescale = config.get("timescale", 10_000)
    decay = lambda count: base_learning_rate * jax.lax.rsqrt(1.0 + count / timescale)  # noqa: E731
  elif name == "step":
    boundaries = {int(b * total_steps) - warmup: config.get("decay_factor", 0.1)
                  for b in config.get("boundaries", (0.3, 0.6, 0.9))}
    decay = optax.piecewise_constant_schedule(base_learning_rate, boundaries)
  else:
    raise ValueError(f"Unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}.")
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, base_learning_rate, warmup), decay], [warmup])


def path_name(path: tuple[Any, ...]) -> str:
  """``'Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel'`` from a pytree key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def weight_decay_mask(params: Any, pattern: str = NO_DECAY_PATTERN) -> Any:
  """True for the parameters that take weight decay: everything whose name does not match ``pattern``."""
  return jax.tree_util.tree_map_with_path(lambda path, _: re.search(pattern, path_name(path)) is None, params)


def create_optimizer(config: ml_collections.ConfigDict, *, total_steps: int
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer of ``config.optimizer`` with ``config.schedule``; returns it with its schedule."""
  opt = config.optimizer
  schedule = create_learning_rate_fn(config.schedule, base_learning_rate=opt.learning_rate,
                                     total_steps=total_steps)
  weight_decay = opt.get("weight_decay", 0.0)
  name = opt.name
  if name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask) if weight_decay
                     else optax.identity(),
                     optax.sgd(schedule, momentum=opt.get("momentum", 0.9) or None,
                               nesterov=opt.get("nesterov", False)))
  elif name == "adam":
    tx = optax.adam(schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999), eps=opt.get("eps", 1e-8))
  elif name == "adamw":
    tx = optax.adamw(schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999), eps=opt.get("eps", 1e-8),
                     weight_decay=weight_decay, mask=weight_decay_mask)
  elif name == "lamb":
    tx = optax.lamb(schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999), eps=opt.get("eps", 1e-6),
                    weight_decay=weight_decay, mask=weight_decay_mask)
  else:
    raise ValueError(f"Unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}.")
  clip = opt.get("grad_clip_norm", None)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx, schedule
