"""Class-model visualisation (Simonyan et al. 2014): an image grown by gradient ascent to maximise a class logit or
a channel's mean activation, with the regularisers that make it readable: random jitter and periodic Gaussian blur
(Yosinski et al. 2015), and the decorrelated parameterisation of Olah et al. 2017 ("Feature Visualization"): the
image's Fourier coefficients scaled by 1/frequency^decay_power and its colours by the square root of natural images'
colour covariance. Plain gradient ascent on those parameters moves the pixels by the gradient filtered twice by
each scale, so the ascent runs in pixel space with that filter as its preconditioner: low frequencies and correlated
colours lead, and the high-frequency patterns a classifier also answers to (and that read as noise) stay faint.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import ConfigError
from vitjax.explain.filters import gaussian_blur
from vitjax.explain.scorer import Scorer, logits_at_layer

# The square root of ImageNet's RGB colour covariance (Olah et al. 2017, lucid's `color_correlation_svd_sqrt`).
COLOUR_CORRELATION = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)


def precondition(gradient: jax.Array, decay_power: float) -> jax.Array:
  """A pixel gradient [H, W, C] as the decorrelated parameterisation moves the image: each spatial frequency f
  scaled by (1/f)^(2 decay_power) (the lowest non-zero frequency sets the unit; the mean keeps its scale), the
  colours (3 channels) mixed by the colour correlation times its transpose; both filters normalised to keep the
  gradient's overall scale comparable."""
  height, width = gradient.shape[:2]
  frequencies = np.sqrt(np.fft.fftfreq(height)[:, None] ** 2 + np.fft.rfftfreq(width)[None, :] ** 2)
  scale = (np.maximum(frequencies, 1.0 / max(height, width)) * max(height, width)) ** -decay_power
  spectrum = jnp.fft.rfft2(gradient, axes=(0, 1)) * jnp.asarray(scale[..., None], jnp.complex64)
  filtered = jnp.fft.irfft2(spectrum, s=(height, width), axes=(0, 1))
  if gradient.shape[-1] == 3:
    mixing = COLOUR_CORRELATION @ COLOUR_CORRELATION.T
    filtered = filtered @ jnp.asarray(mixing / np.abs(mixing).sum(axis=1).max())
  return filtered


def _objective(scorer: Scorer, layer: str | None, target: jax.Array):
  """The scalar to maximise for one image [H, W, C]: the logit of class `target`, or with `layer` the mean
  activation of its channel `target`."""

  def objective(image: jax.Array) -> jax.Array:
    if layer is None:
      return scorer.logits(image[None])[0, target]
    _, activation = logits_at_layer(scorer, image[None], layer)
    return jnp.mean(activation[..., target].astype(jnp.float32))

  return objective


@functools.partial(
  jax.jit,
  static_argnames=(
    "image_shape",
    "layer",
    "steps",
    "learning_rate",
    "jitter",
    "blur_sigma",
    "blur_every",
    "decay_power",
  ),
)
def class_model(
  scorer: Scorer,
  target: jax.Array,
  key: jax.Array,
  *,
  image_shape: tuple[int, ...],
  layer: str | None = None,
  steps: int,
  learning_rate: float,
  jitter: int,
  blur_sigma: float,
  blur_every: int,
  decay_power: float = 1.0,
) -> jax.Array:
  """An image [H, W, C] in [0, 255] that maximises the objective: from grey with a little noise, `steps` ascent
  steps of `learning_rate` pixels (per unit of the preconditioned gradient's standard deviation) on a copy rolled
  by up to `jitter` pixels, the gradient decorrelated (`precondition`; `decay_power` 0 leaves only the colour
  mixing), blurred by `blur_sigma` every `blur_every` steps and kept in range."""
  grad = jax.grad(_objective(scorer, layer, target))
  init_key, key = jax.random.split(key)
  start = 127.5 + 8.0 * jax.random.normal(init_key, image_shape)

  def step(t, image):
    shift = jax.random.randint(jax.random.fold_in(key, t), (2,), -jitter, jitter + 1)
    gradient = jnp.roll(grad(jnp.roll(image, shift, axis=(0, 1))), -shift, axis=(0, 1))
    gradient = precondition(gradient, decay_power)
    image = image + learning_rate * gradient / (jnp.std(gradient) + 1e-8)
    image = jax.lax.cond((t + 1) % blur_every == 0, lambda x: gaussian_blur(x, blur_sigma), lambda x: x, image)
    return jnp.clip(image, 0.0, 255.0)

  return jax.lax.fori_loop(0, steps, step, start)


def targets(entries: tuple, class_names: list[str], predicted: list[int]) -> list[tuple[str, str | None, int]]:
  """(title, layer or None, class or channel index) of each `config.explain.visualize_class` entry: a class name,
  a class index, or "LAYER:CHANNEL"; no entries: the `predicted` classes, each once."""
  if not entries:
    return [(class_names[i], None, i) for i in dict.fromkeys(predicted)]
  found = []
  for entry in map(str, entries):
    layer, _, channel = entry.rpartition(":")
    if layer and channel.isdigit():
      found.append((entry, layer, int(channel)))
    elif entry in class_names:
      found.append((entry, None, class_names.index(entry)))
    elif entry.isdigit() and int(entry) < len(class_names):
      found.append((class_names[int(entry)], None, int(entry)))
    else:
      raise ConfigError(
        f"config.explain.visualize_class entry {entry!r} is no class name, class index below {len(class_names)} "
        f"or LAYER:CHANNEL."
      )
  return found
