"""Robust training objectives: PGD adversarial training, TRADES, fast FGSM training and Gaussian-noise training.

Each is registered under its `config.objective` name and reads `config.adversarial` (budgets in pixel levels of
1/255 of the range, L-inf). Perturbations are made on [0, 255] pixels: the train batch's pixel scale comes from
`config.data.pp_train`'s final normalisation, so one epsilon means the same thing for any run. The attacks are the
pure functions of `robustness.attacks`; the model runs in training mode throughout (dropout with the step's rng).
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vitjax import data
from vitjax.errors import ConfigError
from vitjax.robustness import attacks
from vitjax.train import objectives
from vitjax.train.objectives import Batch, Forward, Objective, Setting


def check_options(options: ml_collections.ConfigDict) -> None:
  """Fails early, naming the key, on a budget that no attack can use."""
  for key in ("epsilon", "step_size", "noise_stddev"):
    if not options[key] > 0:
      raise ConfigError(f"config.adversarial.{key} must be > 0 (pixel levels of 1/255), got {options[key]}.")
  if options.steps < 1:
    raise ConfigError(f"config.adversarial.steps must be >= 1, got {options.steps}.")
  if options.trades_beta < 0:
    raise ConfigError(f"config.adversarial.trades_beta must be >= 0, got {options.trades_beta}.")


def _pixel_scale(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  check_options(config.adversarial)
  return data.pixel_affine(config.data.pp_train)


def _per_example_loss(forward: Forward, params: Any, labels: jax.Array, rng: jax.Array, setting: Setting):
  """`loss(model inputs)` per example, for the attack's gradient (its BatchNorm statistics are dropped)."""

  def loss(images: jax.Array) -> jax.Array:
    logits, _ = forward(params, images, rng)
    return setting.loss_fn(logits, labels)

  return loss


def _train_on(
  forward: Forward, params: Any, batch: Batch, rng: jax.Array, setting: Setting, *, pixels, perturbed, affine
):
  """The run's loss on the `perturbed` pixels (as model inputs by `affine`) with the batch's labels, and the
  largest pixel change (levels of 1/255)."""
  logits, batch_stats = forward(params, attacks.from_pixels(perturbed, *affine), rng)
  metrics = {
    "accuracy": objectives.accuracy(logits, batch["labels"]),
    "perturbation": jnp.abs(perturbed - pixels).max(),
  }
  return setting.loss_fn(logits, batch["labels"]).mean(), metrics, batch_stats


def _attack_trainer(config: ml_collections.ConfigDict, setting: Setting, *, steps: int, step_size: float) -> Objective:
  """Training on L-inf PGD examples of `steps` steps of `step_size` pixel levels from a random start."""
  scale, offset = _pixel_scale(config)
  epsilon = config.adversarial.epsilon

  def objective(forward: Forward, params: Any, batch: Batch, rng: jax.Array):
    attack_rng, start_rng, rng = jax.random.split(rng, 3)
    loss = _per_example_loss(forward, params, batch["labels"], attack_rng, setting)
    pixels = attacks.to_pixels(batch["image"], scale, offset)
    adversarial = attacks.pgd(
      attacks.in_pixels(loss, scale, offset), pixels, start_rng, epsilon=epsilon, step_size=step_size, steps=steps
    )
    return _train_on(forward, params, batch, rng, setting, pixels=pixels, perturbed=adversarial, affine=(scale, offset))

  return objective


@objectives.register("pgd_at")
def _pgd_at(config: ml_collections.ConfigDict, setting: Setting) -> Objective:
  """Madry et al. (2018): the loss on PGD examples of `config.adversarial` (epsilon, steps, step_size)."""
  options = config.adversarial
  return _attack_trainer(config, setting, steps=options.steps, step_size=options.step_size)


@objectives.register("fast_fgsm")
def _fast_fgsm(config: ml_collections.ConfigDict, setting: Setting) -> Objective:
  """Wong et al. (2020), "fast is better than free": one FGSM step of 1.25 epsilon from a uniform random start."""
  return _attack_trainer(config, setting, steps=1, step_size=1.25 * config.adversarial.epsilon)


def _kl(clean_logits: jax.Array, logits: jax.Array) -> jax.Array:
  """KL(softmax(clean) || softmax(logits)) per example."""
  clean = jax.nn.log_softmax(clean_logits.astype(jnp.float32))
  return jnp.sum(jnp.exp(clean) * (clean - jax.nn.log_softmax(logits.astype(jnp.float32))), axis=-1)


@objectives.register("trades")
def _trades(config: ml_collections.ConfigDict, setting: Setting) -> Objective:
  """Zhang et al. (2019): the loss on clean images plus `trades_beta` times KL(clean || adversarial), the
  adversarial images maximising that KL by PGD (from a random start: at the clean images its gradient is 0)."""
  scale, offset = _pixel_scale(config)
  options = config.adversarial

  def objective(forward: Forward, params: Any, batch: Batch, rng: jax.Array):
    attack_rng, start_rng, rng = jax.random.split(rng, 3)
    clean_logits, batch_stats = forward(params, batch["image"], rng)
    target = jax.lax.stop_gradient(clean_logits)

    def divergence(images: jax.Array) -> jax.Array:
      return _kl(target, forward(params, images, attack_rng)[0])

    pixels = attacks.to_pixels(batch["image"], scale, offset)
    adversarial = attacks.pgd(
      attacks.in_pixels(divergence, scale, offset),
      pixels,
      start_rng,
      epsilon=options.epsilon,
      step_size=options.step_size,
      steps=options.steps,
    )
    adversarial_logits, _ = forward(params, attacks.from_pixels(adversarial, scale, offset), rng)
    robust = _kl(clean_logits, adversarial_logits).mean()
    loss = setting.loss_fn(clean_logits, batch["labels"]).mean() + options.trades_beta * robust
    metrics = {"accuracy": objectives.accuracy(clean_logits, batch["labels"]), "robust_kl": robust}
    return loss, metrics, batch_stats

  return objective


@objectives.register("gaussian_noise")
def _gaussian_noise(config: ml_collections.ConfigDict, setting: Setting) -> Objective:
  """Training on pixels with N(0, noise_stddev^2) noise added (in pixel levels), clipped to [0, 255]."""
  scale, offset = _pixel_scale(config)
  stddev = config.adversarial.noise_stddev

  def objective(forward: Forward, params: Any, batch: Batch, rng: jax.Array):
    noise_rng, rng = jax.random.split(rng)
    pixels = attacks.to_pixels(batch["image"], scale, offset)
    noisy = jnp.clip(pixels + stddev * jax.random.normal(noise_rng, pixels.shape), 0.0, attacks.PIXEL_MAX)
    return _train_on(forward, params, batch, rng, setting, pixels=pixels, perturbed=noisy, affine=(scale, offset))

  return objective
