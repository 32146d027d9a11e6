"""Masked autoencoding (`mae`; He et al., "Masked Autoencoders Are Scalable Vision Learners", 2021) for ViTs.

A random `mask_ratio` of each image's patches is dropped (a fresh choice per example), the model's own encoder
runs on the visible tokens alone, and a light transformer decoder (this objective's heads, not the model's
parameters) fills mask tokens in at the dropped places and predicts their pixels, normalised per patch; the loss
is the mean squared error over masked patches only.

The encoder pass is the model itself, applied with `nn.intercept_methods`: once the patch tokens carry their
position embedding (after the learned table, or on entering the encoder for fixed sin-cos ones) only the visible
ones go on, and the encoder's output tokens are sown for the decoder. So the ViT needs no MAE-specific code, and
the pre-trained `params` are a plain ViT's.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from vitjax import models
from vitjax.errors import ConfigError
from vitjax.models import vit
from vitjax.train import objectives
from vitjax.train.objectives import Batch, Forward, HeadObjective, Setting
from vitjax.train.selfsupervised import unlabelled_images


def random_masking(rng: jax.Array, num_examples: int, num_patches: int, mask_ratio: float):
  """(ids of the kept patches (N, keep) in shuffled order, ids restoring the original order (N, L), mask (N, L)
  with 1 on dropped patches); keep = int(L * (1 - mask_ratio)) patches of every example, chosen at random."""
  keep = int(num_patches * (1.0 - mask_ratio))
  shuffle = jnp.argsort(jax.random.uniform(rng, (num_examples, num_patches)), axis=1)
  restore = jnp.argsort(shuffle, axis=1)
  mask = jnp.take_along_axis(jnp.arange(num_patches)[None, :] >= keep, restore, axis=1)
  return shuffle[:, :keep], restore, mask.astype(jnp.float32)


def patchify(images: jax.Array, patch: int) -> jax.Array:
  """(N, H, W, C) -> (N, H/p * W/p, p * p * C), patches in row-major order as the ViT's tokens."""
  n, h, w, c = images.shape
  x = images.reshape(n, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, (h // patch) * (w // patch), patch * patch * c)


def reconstruction_loss(predicted: jax.Array, images: jax.Array, mask: jax.Array, patch: int) -> jax.Array:
  """Mean squared error to the per-patch normalised pixels, averaged over the masked patches only."""
  target = patchify(images.astype(jnp.float32), patch)
  mean, var = target.mean(-1, keepdims=True), target.var(-1, keepdims=True)
  target = (target - mean) / jnp.sqrt(var + 1e-6)
  per_patch = jnp.mean((predicted - target) ** 2, axis=-1)
  return jnp.sum(per_patch * mask) / jnp.maximum(mask.sum(), 1.0)


class DecoderBlock(nn.Module):
  """Pre-LayerNorm transformer block of the decoder."""

  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.LayerNorm(epsilon=1e-6)(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(y, y)
    y = nn.LayerNorm(epsilon=1e-6)(x)
    y = nn.Dense(x.shape[-1])(nn.gelu(nn.Dense(4 * x.shape[-1])(y)))
    return x + y


class Decoder(nn.Module):
  """Visible tokens (N, keep, D) and the restoring ids -> predicted pixels of every patch (N, L, p * p * C)."""

  width: int
  depth: int
  num_heads: int
  grid: tuple[int, int]
  patch_pixels: int

  @nn.compact
  def __call__(self, visible: jax.Array, restore: jax.Array) -> jax.Array:
    x = nn.Dense(self.width, name="embed")(visible)
    n, keep, _ = x.shape
    mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.width))
    x = jnp.concatenate([x, jnp.tile(mask_token, (n, restore.shape[1] - keep, 1))], axis=1)
    x = jnp.take_along_axis(x, restore[..., None], axis=1)
    x = x + vit.posemb_sincos_2d(height=self.grid[0], width=self.grid[1], dim=self.width)
    for i in range(self.depth):
      x = DecoderBlock(self.num_heads, name=f"block_{i}")(x)
    return nn.Dense(self.patch_pixels, name="pixels")(nn.LayerNorm(epsilon=1e-6)(x))


def encode_visible(
  apply_fn, params: Any, images: jax.Array, keep_ids: jax.Array, rng: jax.Array, *, num_patches: int, learned: bool
) -> jax.Array:
  """The ViT's encoder output on the visible patches of `images` (`keep_ids` of `num_patches`): the tokens before
  the patch grid (class token, registers) first, then the kept patches in `keep_ids` order. `learned`: the model
  adds a learned position table inside its encoder (else fixed sin-cos ones before it)."""

  def drop_masked(tokens: jax.Array) -> jax.Array:
    prefix = tokens.shape[1] - num_patches
    kept = jnp.take_along_axis(tokens[:, prefix:], keep_ids[..., None], axis=1)
    return jnp.concatenate([tokens[:, :prefix], kept], axis=1)

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, vit.AddPositionEmbs):
      return drop_masked(next_fun(*args, **kwargs))
    if context.method_name == "__call__" and isinstance(context.module, vit.Encoder):
      tokens = args[0] if learned else drop_masked(args[0])
      encoded = next_fun(tokens, *args[1:], **kwargs)
      context.module.sow("intermediates", "mae_tokens", encoded)
      return encoded
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    _, state = apply_fn({"params": params}, images, train=True, rngs={"dropout": rng}, mutable=["intermediates"])
  return state["intermediates"]["Transformer"]["mae_tokens"][0]


def mae(model: vit.VisionTransformer, *, image_shape, mask_ratio: float, decoder, use_target: bool) -> HeadObjective:
  """Masked autoencoding of `model` (a plain ViT) on `image_shape` images with `decoder` (width, depth, heads)."""
  patch = model.patch_size
  grid = (image_shape[0] // patch, image_shape[1] // patch)
  num_patches = grid[0] * grid[1]
  keep = int(num_patches * (1.0 - mask_ratio))
  width, depth, heads = decoder
  head = Decoder(width=width, depth=depth, num_heads=heads, grid=grid, patch_pixels=patch * patch * image_shape[2])

  def init(rng: jax.Array) -> Any:
    visible = jnp.zeros((1, keep, model.hidden_size), jnp.float32)
    return head.init(rng, visible, jnp.arange(num_patches)[None])["params"]

  def loss(forward: Forward, params: Any, heads: Any, batch: Batch, rng: jax.Array, step: jax.Array):
    del step
    mask_key, model_key = jax.random.split(rng)
    images = unlabelled_images(batch, use_target=use_target)
    keep_ids, restore, mask = random_masking(mask_key, images.shape[0], num_patches, mask_ratio)
    tokens = encode_visible(
      forward.apply_fn, params, images, keep_ids, model_key, num_patches=num_patches, learned=model.posemb == "learn"
    )
    predicted = head.apply({"params": heads}, tokens[:, tokens.shape[1] - keep :], restore)
    value = reconstruction_loss(predicted, images, mask, patch)
    return value, {"masked_fraction": mask.mean()}, forward.batch_stats

  return HeadObjective(init=init, loss=loss)


def check_plain_vit(model: Any, name: str) -> vit.VisionTransformer:
  """`model` if MAE can drop its tokens: a ViT on image patches (no CNN stem), with absolute position embeddings
  and one patch size."""
  plain = isinstance(model, vit.VisionTransformer) and type(model).stem is vit.VisionTransformer.stem
  if not plain:
    raise ConfigError(f"config.objective='mae' needs a plain ViT (patches of the image), not {name!r}.")
  if model.posemb not in ("learn", "sincos2d") or getattr(model, "patch_sizes", None):
    raise ConfigError(
      "config.objective='mae' drops tokens: use config.model.posemb 'learn' or 'sincos2d' and one patch size."
    )
  return model


@objectives.register("mae")
def _mae(config: ml_collections.ConfigDict, setting: Setting) -> HeadObjective:
  options = config.ssl
  if not 0.0 < options.mask_ratio < 1.0:
    raise ConfigError(f"config.ssl.mask_ratio={options.mask_ratio} must lie strictly between 0 and 1 (MAE: 0.75).")
  model = check_plain_vit(models.from_config(config.model, num_classes=setting.num_classes), config.model.name)
  return mae(
    model,
    image_shape=setting.image_shape,
    mask_ratio=options.mask_ratio,
    decoder=(options.decoder_width, options.decoder_depth, options.decoder_heads),
    use_target=options.use_target,
  )
