"""Domain adaptation objectives on a labelled source batch and an unlabelled target batch.

The target images arrive as `batch["target_image"]` (config.data.target). `dann` is domain-adversarial training
(Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", 2015): a domain classifier on the
pre-logits learns to tell source from target while a gradient reversal layer makes the features fool it, with the
reversal's strength ramped up by lambda_p = 2 / (1 + exp(-gamma p)) - 1 over training progress p. `source_only` is
its baseline: the same two streams, trained on the source labels alone, the target only measured.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn

from vitjax import losses
from vitjax.errors import ConfigError
from vitjax.train import objectives
from vitjax.train.objectives import Batch, Forward, HeadObjective, Setting


@jax.custom_vjp
def reverse_gradient(x: jax.Array, strength: jax.Array) -> jax.Array:
  """The identity forward; backward, the gradient times `-strength` (Ganin's gradient reversal layer)."""
  del strength
  return x


def _reverse_forward(x, strength):
  return x, strength


def _reverse_backward(strength, g):
  return -strength * g, jnp.zeros_like(strength)  # The strength is a schedule, not a parameter.


reverse_gradient.defvjp(_reverse_forward, _reverse_backward)


def ganin_lambda(progress: jax.Array, gamma: float = 10.0) -> jax.Array:
  """lambda_p = 2 / (1 + exp(-gamma p)) - 1: 0 at the start, near 1 from p ~ 0.5 on, so that the domain
  classifier's noisy early signal does not disturb the features."""
  return 2.0 / (1.0 + jnp.exp(-gamma * progress)) - 1.0


class MLPHead(nn.Module):
  """`len(hidden)` ReLU layers of these widths, then a linear layer of `out` units."""

  hidden: Sequence[int]
  out: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
    return nn.Dense(self.out, name="out")(x)


def init_head(head: nn.Module, feature_dim: int):
  """`init(rng) -> params` of `head` on features of width `feature_dim`."""
  return lambda rng: head.init(rng, jnp.zeros((1, feature_dim), jnp.float32))["params"]


def two_streams(batch: Batch) -> jax.Array:
  """Source then target images in one batch, after checking that both preprocessings give the same shape."""
  if "target_image" not in batch:
    raise ConfigError("This objective needs a target stream: set config.data.target (e.g. vitjax_digits_inverted).")
  source, target = batch["image"], batch["target_image"]
  if source.shape[1:] != target.shape[1:]:
    raise ConfigError(
      f"Source images are {source.shape[1:]} but target images {target.shape[1:]}: make config.data.target_pp "
      f"end at the size and channels of config.data.pp_train."
    )
  return jnp.concatenate([source, target])


def domain_labels(num_source: int, num_target: int) -> jax.Array:
  return jnp.concatenate([jnp.zeros(num_source), jnp.ones(num_target)])


def dann(
  loss_fn: losses.LossFn, *, feature_dim: int, num_steps: int, hidden: Sequence[int], weight: float, gamma: float
) -> HeadObjective:
  """Source loss plus `weight` times the domain classifier's loss on source and target, through gradient reversal
  of strength `ganin_lambda(step / num_steps, gamma)`."""
  classifier = MLPHead(hidden=tuple(hidden), out=1)

  def loss(forward: Forward, params: Any, heads: Any, batch: Batch, rng: jax.Array, step: jax.Array):
    images, n = two_streams(batch), batch["image"].shape[0]
    logits, features, batch_stats = forward(params, images, rng, features=True)
    strength = ganin_lambda(step / max(num_steps, 1), gamma)
    domain_logits = classifier.apply({"params": heads}, reverse_gradient(features, strength))[:, 0]
    domains = domain_labels(n, images.shape[0] - n)
    domain_loss = optax.sigmoid_binary_cross_entropy(domain_logits, domains).mean()
    source_loss = loss_fn(logits[:n], batch["labels"]).mean()
    metrics = {
      "accuracy": objectives.accuracy(logits[:n], batch["labels"]),
      "source_loss": source_loss,
      "domain_loss": domain_loss,
      "domain_accuracy": jnp.mean((domain_logits > 0) == (domains > 0.5)),
      "grl_lambda": strength,
    }
    return source_loss + weight * domain_loss, metrics, batch_stats

  return HeadObjective(init=init_head(classifier, feature_dim), loss=loss)


def feature_gap(source: jax.Array, target: jax.Array) -> jax.Array:
  """Distance between the mean source and mean target features (linear-kernel MMD), a cheap shift gauge."""
  return jnp.linalg.norm(source.mean(0) - target.mean(0))


def source_only(loss_fn: losses.LossFn) -> objectives.Objective:
  """The source loss alone; the target batch is only measured (prediction entropy, feature gap), without
  gradients and without changing BatchNorm statistics."""

  def objective(forward: Forward, params: Any, batch: Batch, rng: jax.Array):
    two_streams(batch)
    logits, features, batch_stats = forward(params, batch["image"], rng, features=True)
    target_logits, target_features, _ = forward(
      jax.lax.stop_gradient(params), batch["target_image"], rng, features=True
    )
    probabilities = jax.nn.softmax(target_logits)
    metrics = {
      "accuracy": objectives.accuracy(logits, batch["labels"]),
      "target_entropy": -jnp.mean(jnp.sum(probabilities * jnp.log(probabilities + 1e-12), -1)),
      "feature_gap": feature_gap(features, jax.lax.stop_gradient(target_features)),
    }
    return loss_fn(logits, batch["labels"]).mean(), metrics, batch_stats

  return objective


def _check_target(config: ml_collections.ConfigDict) -> None:
  if not config.data.target:
    raise ConfigError(f"config.objective={config.objective!r} needs config.data.target (a second, unlabelled source).")


@objectives.register("dann")
def _dann(config: ml_collections.ConfigDict, setting: Setting) -> HeadObjective:
  _check_target(config)
  options = config.adapt
  return dann(
    setting.loss_fn,
    feature_dim=objectives.feature_dim(config.model, setting),
    num_steps=setting.num_steps,
    hidden=options.hidden,
    weight=options.domain_weight,
    gamma=options.gamma,
  )


@objectives.register("source_only")
def _source_only(config: ml_collections.ConfigDict, setting: Setting) -> objectives.Objective:
  _check_target(config)
  return source_only(setting.loss_fn)
