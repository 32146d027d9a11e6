"""Class-model visualisation (Simonyan et al. 2014): an image grown by gradient ascent to maximise a class logit or
a channel's mean activation, regularised as Yosinski et al. 2015 with random jitter and periodic Gaussian blur."""

import functools

import jax
import jax.numpy as jnp

from vitjax.errors import ConfigError
from vitjax.explain.filters import gaussian_blur
from vitjax.explain.scorer import Scorer, logits_at_layer


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
  jax.jit, static_argnames=("image_shape", "layer", "steps", "learning_rate", "jitter", "blur_sigma", "blur_every")
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
) -> jax.Array:
  """An image [H, W, C] in [0, 255] that maximises the objective: from grey with a little noise, `steps` ascent
  steps of `learning_rate` pixels (per unit of gradient standard deviation) on a copy rolled by up to `jitter`
  pixels, blurred by `blur_sigma` every `blur_every` steps and kept in range."""
  grad = jax.grad(_objective(scorer, layer, target))
  init_key, key = jax.random.split(key)
  start = 127.5 + 8.0 * jax.random.normal(init_key, image_shape)

  def step(t, image):
    shift = jax.random.randint(jax.random.fold_in(key, t), (2,), -jitter, jitter + 1)
    gradient = jnp.roll(grad(jnp.roll(image, shift, axis=(0, 1))), -shift, axis=(0, 1))
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
