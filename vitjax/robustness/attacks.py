"""Gradient attacks as pure JAX functions, in pixel units: FGSM, PGD under L-inf and L2 budgets.

Attacks run on [0, 255] pixels, not on the model's input scale, so that one epsilon means the same perturbation
whatever the run's final `value_range` or `normalize`: `in_pixels` wraps a loss on model inputs into a loss on
pixels with the (scale, offset) of `data.pixel_affine(pp)`. Adversarial pixels stay in the epsilon ball around the
clean pixels and in [0, 255].
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import ConfigError

PIXEL_MAX = 255.0
NORMS = ("linf", "l2")
ATTACKS = ("fgsm", "pgd_linf", "pgd_l2")

PixelLoss = Callable[[jax.Array], jax.Array]  # pixels (N, H, W, C) -> per-example losses (N,)


def to_pixels(images: jax.Array, scale: np.ndarray, offset: np.ndarray) -> jax.Array:
  """Model inputs back to [0, 255] pixel units (the inverse of `pixel = (input - offset) / scale`)."""
  return (images - jnp.asarray(offset, jnp.float32)) / jnp.asarray(scale, jnp.float32)


def from_pixels(pixels: jax.Array, scale: np.ndarray, offset: np.ndarray) -> jax.Array:
  """[0, 255] pixels to the model's input scale: the affine map of the run's final normalisation."""
  return pixels * jnp.asarray(scale, jnp.float32) + jnp.asarray(offset, jnp.float32)


def in_pixels(loss_on_inputs: PixelLoss, scale: np.ndarray, offset: np.ndarray) -> PixelLoss:
  """`loss(pixels)` from `loss(model inputs)`: gradients and budgets then live in pixel units."""
  return lambda pixels: loss_on_inputs(from_pixels(pixels, scale, offset))


def project(delta: jax.Array, epsilon: jax.Array, norm: str) -> jax.Array:
  """`delta` (per example) moved into the `norm` ball of radius `epsilon`: clipped (L-inf) or rescaled (L2)."""
  if norm == "linf":
    return jnp.clip(delta, -epsilon, epsilon)
  norms = jnp.sqrt(jnp.sum(delta**2, axis=tuple(range(1, delta.ndim)), keepdims=True))
  return delta * jnp.minimum(1.0, epsilon / jnp.maximum(norms, 1e-12))


def _ascent_direction(grad: jax.Array, norm: str) -> jax.Array:
  """The steepest-ascent unit step: the gradient's sign (L-inf) or the per-example normalised gradient (L2)."""
  if norm == "linf":
    return jnp.sign(grad)
  norms = jnp.sqrt(jnp.sum(grad**2, axis=tuple(range(1, grad.ndim)), keepdims=True))
  return grad / jnp.maximum(norms, 1e-12)


def uniform_in_ball(rng: jax.Array, shape: tuple[int, ...], epsilon: jax.Array, norm: str) -> jax.Array:
  """A uniform draw from the `norm` ball of radius `epsilon` (L2: uniform direction and radius^(1/d) law)."""
  if norm == "linf":
    return jax.random.uniform(rng, shape, minval=-1.0, maxval=1.0) * epsilon
  direction_rng, radius_rng = jax.random.split(rng)
  direction = _ascent_direction(jax.random.normal(direction_rng, shape), "l2")
  dims = int(np.prod(shape[1:]))
  radius = jax.random.uniform(radius_rng, (shape[0],) + (1,) * (len(shape) - 1)) ** (1.0 / dims)
  return direction * radius * epsilon


def pgd(
  loss_fn: PixelLoss,
  pixels: jax.Array,
  rng: jax.Array | None,
  *,
  epsilon: jax.Array | float,
  step_size: jax.Array | float,
  steps: int,
  norm: str = "linf",
) -> jax.Array:
  """Projected gradient ascent of `sum(loss_fn(x))` from `pixels` (Madry et al. 2018): adversarial pixels within
  `epsilon` of `pixels` in `norm` and inside [0, 255]. `rng` draws a random start in the ball; None starts at
  the clean pixels. Each example's step depends on its own loss only.
  """
  if norm not in NORMS:
    raise ValueError(f"Unknown attack norm {norm!r}; choose one of: {', '.join(NORMS)}.")
  pixels = jax.lax.stop_gradient(pixels)
  delta = jnp.zeros_like(pixels) if rng is None else uniform_in_ball(rng, pixels.shape, epsilon, norm)
  delta = jnp.clip(pixels + delta, 0.0, PIXEL_MAX) - pixels
  grad_fn = jax.grad(lambda x: jnp.sum(loss_fn(x)))

  def step(_, delta):
    delta = delta + step_size * _ascent_direction(grad_fn(pixels + delta), norm)
    return jnp.clip(pixels + project(delta, epsilon, norm), 0.0, PIXEL_MAX) - pixels

  delta = jax.lax.fori_loop(0, steps, step, delta)
  return jax.lax.stop_gradient(pixels + delta)


def fgsm(loss_fn: PixelLoss, pixels: jax.Array, *, epsilon: jax.Array | float) -> jax.Array:
  """The fast gradient sign method (Goodfellow et al. 2015): one L-inf step of size `epsilon` from the clean
  pixels, clipped to [0, 255]."""
  return pgd(loss_fn, pixels, None, epsilon=epsilon, step_size=epsilon, steps=1, norm="linf")


def attack(
  name: str,
  loss_fn: PixelLoss,
  pixels: jax.Array,
  rng: jax.Array,
  *,
  epsilon: jax.Array | float,
  relative_step_size: float,
  steps: int,
  random_start: bool = True,
) -> jax.Array:
  """The attack `name` of `ATTACKS` at `epsilon` pixel units; PGD takes `steps` steps of
  `relative_step_size * epsilon` from a random start in the ball (or from the clean pixels)."""
  if name == "fgsm":
    return fgsm(loss_fn, pixels, epsilon=epsilon)
  if name not in ATTACKS:
    raise ConfigError(f"Unknown attack {name!r}; choose one of: {', '.join(ATTACKS)}.")
  start = rng if random_start else None
  norm = name.removeprefix("pgd_")
  return pgd(loss_fn, pixels, start, epsilon=epsilon, step_size=relative_step_size * epsilon, steps=steps, norm=norm)
