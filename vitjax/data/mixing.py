"""Batch mixing: Mixup (Zhang et al. 2017) and CutMix (Yun et al. 2019), keyed by the batch's index.

A batch is mixed with itself in reverse order (example ``i`` with ``B - 1 - i``) under one weight ``lam`` drawn
per batch, as timm does: Mixup blends whole images, ``lam * x + (1 - lam) * x_reversed``; CutMix pastes a box of
the reversed batch covering a ``1 - lam`` share of the image, and ``lam`` becomes the exact share left unpasted
after clipping the box to the image. Targets mix with the same weight, so they still sum to one (or stay
multi-hot mixtures for multi-label data). NaFlex batches of packed patches pair images of similar aspect ratio
instead (``patch_mixing``). All draws are stateless functions of the batch's seed.
"""

import dataclasses
from typing import Any

import tensorflow as tf

from vitjax.data import patch_mixing
from vitjax.errors import ConfigError

Batch = dict[str, tf.Tensor]


@dataclasses.dataclass(frozen=True)
class Mixing:
  """``mixup_alpha``/``cutmix_alpha``: Beta(alpha, alpha) parameters, 0 disables that kind. ``switch_prob``: the
  chance of CutMix rather than Mixup when both are enabled. ``prob``: the chance that a batch is mixed at all."""

  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  switch_prob: float = 0.5
  prob: float = 1.0

  def __post_init__(self):
    for name in ("mixup_alpha", "cutmix_alpha"):
      if getattr(self, name) < 0:
        raise ConfigError(f"config.data.mixup.{name}={getattr(self, name)} must be >= 0 (0 disables it).")
    for name in ("switch_prob", "prob"):
      if not 0 <= getattr(self, name) <= 1:
        raise ConfigError(f"config.data.mixup.{name}={getattr(self, name)} must lie in [0, 1].")

  @property
  def enabled(self) -> bool:
    return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

  def __call__(self, batch: Batch, seed: tf.Tensor) -> Batch:
    return mix_batch(batch, seed, self)


def from_config(config: Any) -> Mixing:
  """A ``Mixing`` from the ``config.data.mixup`` dict (keys left out keep their defaults); unknown keys are errors."""
  values = dict(config)
  known = {f.name for f in dataclasses.fields(Mixing)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ConfigError(f"Unknown config.data.mixup keys {unknown}; choose from {sorted(known)}.")
  return Mixing(**values)


def _beta(seed: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
  gammas = tf.random.stateless_gamma([2], seed, alpha=alpha)
  return gammas[0] / tf.maximum(gammas[0] + gammas[1], 1e-12)


def cutmix_box(height: tf.Tensor, width: tf.Tensor, lam: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """A [height, width] boolean mask of a box with area ``(1 - lam)`` of the image at a uniform centre, clipped."""
  cut = tf.sqrt(1.0 - lam)
  cut_h = tf.cast(tf.cast(height, tf.float32) * cut, tf.int32)
  cut_w = tf.cast(tf.cast(width, tf.float32) * cut, tf.int32)
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  cy = tf.random.stateless_uniform([], seeds[0], 0, height, tf.int32)
  cx = tf.random.stateless_uniform([], seeds[1], 0, width, tf.int32)
  top, bottom = tf.maximum(cy - cut_h // 2, 0), tf.minimum(cy + cut_h - cut_h // 2, height)
  left, right = tf.maximum(cx - cut_w // 2, 0), tf.minimum(cx + cut_w - cut_w // 2, width)
  rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
  return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


def mix_batch(batch: Batch, seed: tf.Tensor, mixing: Mixing) -> Batch:
  """Mixes ``batch["image"]`` (float [B, H, W, C], or NaFlex patches [B, L, D + 3]: ``patch_mixing``) and
  ``batch["labels"]`` (float [B, K]) as ``mixing`` says."""
  if not mixing.enabled:
    return batch
  images, labels = batch["image"], batch["labels"]
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  apply = tf.random.stateless_uniform([], seeds[0]) < mixing.prob
  if mixing.mixup_alpha > 0 and mixing.cutmix_alpha > 0:
    use_cutmix = tf.random.stateless_uniform([], seeds[1]) < mixing.switch_prob
  else:
    use_cutmix = tf.constant(mixing.cutmix_alpha > 0)
  alpha = tf.where(use_cutmix, float(mixing.cutmix_alpha), float(mixing.mixup_alpha))
  lam = _beta(seeds[2], alpha)
  mix = patch_mixing.mix_packed if images.shape.rank == 3 else _mix_images
  mixed, mixed_labels = mix(images, labels, lam, use_cutmix, seeds[3])
  mixed, labels = tf.cond(apply, lambda: (mixed, mixed_labels), lambda: (images, labels))
  return {**batch, "image": tf.ensure_shape(mixed, images.shape), "labels": labels}


def _mix_images(images: tf.Tensor, labels: tf.Tensor, lam: tf.Tensor, use_cutmix: tf.Tensor, seed: tf.Tensor):
  """Images [B, H, W, C] and labels mixed with the batch reversed: blended with weight ``lam``, or a box pasted."""
  other_images, other_labels = tf.reverse(images, [0]), tf.reverse(labels, [0])
  height, width = tf.shape(images)[1], tf.shape(images)[2]

  def cutmix():
    box = cutmix_box(height, width, lam, seed)
    pasted = tf.reduce_mean(tf.cast(box, tf.float32))
    return tf.where(box[None, :, :, None], other_images, images), 1.0 - pasted

  def mixup():
    return lam * images + (1.0 - lam) * other_images, lam

  mixed, weight = tf.cond(use_cutmix, cutmix, mixup)
  return mixed, weight * labels + (1.0 - weight) * other_labels
