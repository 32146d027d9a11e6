"""Self-supervised objectives on unlabelled images: `rotation` (predict which of four quarter turns an image got;
Gidaris et al. 2018) and `simclr` (agree on two augmented views of each image; Chen et al. 2020). Masked
autoencoding (`mae`) lives in masked.py.

They learn from `batch["image"]` (labels unused) and, with config.data.target and `config.ssl.use_target`, from
`batch["target_image"]` too, so an encoder can be pre-trained on the very domain it will be used on. Their heads
(a 4-way classifier, a projection MLP) are `objective_params`: the run's `params` stay a plain model that
fine-tunes or linear-probes through `config.pretrained.path`.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vitjax.errors import ConfigError
from vitjax.train import objectives
from vitjax.train.adaptation import MLPHead, init_head
from vitjax.train.objectives import Batch, Forward, HeadObjective, Setting

NUM_ROTATIONS = 4


def unlabelled_images(batch: Batch, *, use_target: bool) -> jax.Array:
  """The images a self-supervised objective learns from: the source batch, and the target batch if asked for."""
  if use_target and "target_image" in batch:
    return jnp.concatenate([batch["image"], batch["target_image"]])
  return batch["image"]


def rotate_batch(images: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(each image turned by k quarter turns counter-clockwise, k), k uniform in 0..3 per image."""
  if images.shape[1] != images.shape[2]:
    raise ConfigError(f"Rotation prediction needs square images, got {images.shape[1]}x{images.shape[2]}.")
  turns = jax.random.randint(rng, (images.shape[0],), 0, NUM_ROTATIONS)
  turned = jnp.stack([jnp.rot90(images, k, axes=(1, 2)) for k in range(NUM_ROTATIONS)])
  return turned[turns, jnp.arange(images.shape[0])], turns


def random_resized_crop(image: jax.Array, rng: jax.Array, *, min_scale: float) -> jax.Array:
  """A crop of `min_scale`..1 of the area and aspect ratio 3/4..4/3, resized back to the image's size."""
  height, width = image.shape[:2]
  area_key, ratio_key, y_key, x_key = jax.random.split(rng, 4)
  area = jax.random.uniform(area_key, minval=min_scale, maxval=1.0)
  ratio = jnp.exp(jax.random.uniform(ratio_key, minval=jnp.log(3 / 4), maxval=jnp.log(4 / 3)))
  crop_h = jnp.clip(jnp.sqrt(area / ratio), 0.1, 1.0) * height
  crop_w = jnp.clip(jnp.sqrt(area * ratio), 0.1, 1.0) * width
  top = jax.random.uniform(y_key) * (height - crop_h)
  left = jax.random.uniform(x_key) * (width - crop_w)
  scale = jnp.array([height / crop_h, width / crop_w])
  return jax.image.scale_and_translate(
    image, image.shape, (0, 1), scale, -jnp.array([top, left]) * scale, method="linear", antialias=False
  )


def colour_jitter(image: jax.Array, rng: jax.Array, *, strength: float) -> jax.Array:
  """Brightness, contrast and saturation each changed by up to `strength` (relative), with probability 0.8."""
  apply_key, brightness_key, contrast_key, saturation_key = jax.random.split(rng, 4)
  factor = lambda key: jax.random.uniform(key, minval=1.0 - strength, maxval=1.0 + strength)  # noqa: E731
  jittered = image + (factor(brightness_key) - 1.0)
  mean = jittered.mean()
  jittered = mean + (jittered - mean) * factor(contrast_key)
  grey = jittered.mean(axis=-1, keepdims=True)
  jittered = grey + (jittered - grey) * factor(saturation_key)
  return jnp.where(jax.random.uniform(apply_key) < 0.8, jittered, image)


def augment_view(images: jax.Array, rng: jax.Array, *, min_scale: float, jitter: float) -> jax.Array:
  """One SimCLR view of every image: random resized crop, horizontal flip, colour jitter, keyed per image."""

  def one(image: jax.Array, key: jax.Array) -> jax.Array:
    crop_key, flip_key, jitter_key = jax.random.split(key, 3)
    image = random_resized_crop(image, crop_key, min_scale=min_scale)
    image = jnp.where(jax.random.uniform(flip_key) < 0.5, image[:, ::-1], image)
    return colour_jitter(image, jitter_key, strength=jitter)

  return jax.vmap(one)(images, jax.random.split(rng, images.shape[0]))


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
  """(NT-Xent loss, fraction of views whose nearest other view is their pair) of paired embeddings (N, D).

  Each of the 2N normalised embeddings is classified, by cosine similarity over `temperature`, against the 2N - 1
  others, its pair being the right answer; the loss is the mean cross-entropy over all 2N.
  """
  z = jnp.concatenate([z1, z2]).astype(jnp.float32)
  z = z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-12)
  n = z1.shape[0]
  similarity = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, z @ z.T / temperature)
  pairs = jnp.concatenate([jnp.arange(n) + n, jnp.arange(n)])
  log_probabilities = jax.nn.log_softmax(similarity, axis=-1)
  loss = -jnp.mean(log_probabilities[jnp.arange(2 * n), pairs])
  return loss, jnp.mean(jnp.argmax(similarity, axis=-1) == pairs)


def rotation(*, feature_dim: int, hidden: tuple[int, ...], use_target: bool) -> HeadObjective:
  """Four-way cross-entropy of a head on the pre-logits of randomly turned images."""
  head = MLPHead(hidden=hidden, out=NUM_ROTATIONS)

  def loss(forward: Forward, params: Any, heads: Any, batch: Batch, rng: jax.Array, step: jax.Array):
    del step
    turn_key, model_key = jax.random.split(rng)
    images, turns = rotate_batch(unlabelled_images(batch, use_target=use_target), turn_key)
    _, features, batch_stats = forward(params, images, model_key, features=True)
    logits = head.apply({"params": heads}, features)
    value = optax.softmax_cross_entropy_with_integer_labels(logits, turns).mean()
    return value, {"rotation_accuracy": jnp.mean(jnp.argmax(logits, -1) == turns)}, batch_stats

  return HeadObjective(init=init_head(head, feature_dim), loss=loss)


def simclr(
  *,
  feature_dim: int,
  hidden: tuple[int, ...],
  projection_dim: int,
  temperature: float,
  min_scale: float,
  jitter: float,
  use_target: bool,
) -> HeadObjective:
  """NT-Xent of a projection MLP's outputs on two augmented views of every image, both through one forward."""
  head = MLPHead(hidden=hidden, out=projection_dim)

  def loss(forward: Forward, params: Any, heads: Any, batch: Batch, rng: jax.Array, step: jax.Array):
    del step
    first_key, second_key, model_key = jax.random.split(rng, 3)
    images = unlabelled_images(batch, use_target=use_target)
    views = [augment_view(images, key, min_scale=min_scale, jitter=jitter) for key in (first_key, second_key)]
    _, features, batch_stats = forward(params, jnp.concatenate(views), model_key, features=True)
    z1, z2 = jnp.split(head.apply({"params": heads}, features), 2)
    value, agreement = nt_xent(z1, z2, temperature)
    return value, {"contrastive_accuracy": agreement}, batch_stats

  return HeadObjective(init=init_head(head, feature_dim), loss=loss)


@objectives.register("rotation")
def _rotation(config: ml_collections.ConfigDict, setting: Setting) -> HeadObjective:
  options = config.ssl
  return rotation(
    feature_dim=objectives.feature_dim(config.model, setting),
    hidden=tuple(options.hidden),
    use_target=options.use_target,
  )


@objectives.register("simclr")
def _simclr(config: ml_collections.ConfigDict, setting: Setting) -> HeadObjective:
  options = config.ssl
  if options.temperature <= 0:
    raise ConfigError(f"config.ssl.temperature={options.temperature} must be positive (SimCLR uses 0.1 to 0.5).")
  return simclr(
    feature_dim=objectives.feature_dim(config.model, setting),
    hidden=tuple(options.hidden),
    projection_dim=options.projection_dim,
    temperature=options.temperature,
    min_scale=options.crop_min_scale,
    jitter=options.jitter,
    use_target=options.use_target,
  )
