"""Mixup and CutMix of NaFlex batches: packed patch sequences whose images differ in size, as timm's NaFlex loader
mixes them (`timm.data.naflex_mixup`), at the granularity of whole patches.

Images are sorted by aspect ratio, shuffled within windows of four and paired with a neighbour (an odd one out stays
unmixed), so partners have similar shapes. Only the central overlap of a pair's patch grids is mixed: Mixup blends
all of it, CutMix pastes a box of ``1 - lam`` of it (sides rounded to whole patches) at a random place. Each image
then has its own label weight, the exact share of its patches that stayed its own, so targets match what each image
shows. Coordinates, validity and padding are never touched. The batch-level draws (whether to mix, which kind,
``lam``) are ``mixing``'s.
"""

import tensorflow as tf

WINDOW = 4  # timm's `local_shuffle`: pairings vary between batches of the same shapes.


def grids(images: tf.Tensor) -> tf.Tensor:
  """(rows, columns) of each packed example's patch grid, [B, 2] int32, read off its coordinates and validity."""
  valid = images[..., -1:]
  return tf.cast(tf.reduce_max(images[..., -3:-1] * valid, axis=1), tf.int32) + 1


def partners(shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Each example's partner [B]: neighbours in aspect-ratio order, shuffled within windows; pairing is mutual."""
  size = tf.shape(shape)[0]
  aspect = tf.cast(shape[:, 1], tf.float32) / tf.cast(shape[:, 0], tf.float32)
  order = tf.argsort(aspect, stable=True)
  window = tf.cast(tf.range(size) // WINDOW, tf.float32)
  order = tf.gather(order, tf.argsort(window + tf.random.stateless_uniform([size], seed)))
  position = tf.range(size)
  mate = tf.where(position < size // 2 * 2, tf.bitwise.bitwise_xor(position, 1), position)
  return tf.scatter_nd(order[:, None], tf.gather(order, mate), [size])


def _boxes(own: tf.Tensor, other: tf.Tensor, lam: tf.Tensor, use_cutmix: tf.Tensor, seed: tf.Tensor):
  """Per example, the box it takes from its partner, in its own grid: (top, left, height, width) [B, 4], and where
  that box starts in the partner's grid [B, 2]. Mixup's box is the central overlap; CutMix's a random part of it."""
  overlap = tf.minimum(own, other)
  own_corner, other_corner = (own - overlap) // 2, (other - overlap) // 2
  cut = tf.cast(tf.round(tf.cast(overlap, tf.float32) * tf.sqrt(1.0 - lam)), tf.int32)
  size = tf.where(use_cutmix, cut, overlap)
  offset = tf.random.stateless_uniform(tf.shape(size), seed) * tf.cast(overlap - size + 1, tf.float32)
  offset = tf.minimum(tf.cast(offset, tf.int32), overlap - size)
  return tf.concat([own_corner + offset, size], axis=1), other_corner + offset


def mix_packed(images: tf.Tensor, labels: tf.Tensor, lam: tf.Tensor, use_cutmix: tf.Tensor, seed: tf.Tensor):
  """Packed images [B, L, D + 3] and labels [B, K] mixed with their partners (module doc): Mixup when not
  ``use_cutmix``, with weight ``lam`` inside the box; CutMix pastes the box whole."""
  pair_seed, box_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  shape = grids(images)
  partner = partners(shape, pair_seed)
  other_shape = tf.gather(shape, partner)
  box, source = _boxes(shape, other_shape, lam, use_cutmix, box_seed)
  box = tf.where((partner == tf.range(tf.shape(partner)[0]))[:, None], 0, box)  # The odd one out keeps itself.
  coords = tf.cast(images[..., -3:-1], tf.int32)
  inside = tf.reduce_all((coords >= box[:, None, :2]) & (coords < box[:, None, :2] + box[:, None, 2:]), axis=-1)
  inside &= images[..., -1] > 0
  at = coords - box[:, None, :2] + source[:, None, :]
  index = tf.where(inside, at[..., 0] * other_shape[:, None, 1] + at[..., 1], 0)
  taken = tf.gather(tf.gather(images, partner)[..., :-3], index, batch_dims=1)
  weight = tf.where(use_cutmix, 0.0, lam)
  patches = tf.where(inside[..., None], weight * images[..., :-3] + (1.0 - weight) * taken, images[..., :-3])
  share = tf.cast(tf.reduce_prod(box[:, 2:], axis=1), tf.float32) / tf.cast(tf.reduce_prod(shape, axis=1), tf.float32)
  own = (1.0 - (1.0 - weight) * share)[:, None]
  return tf.concat([patches, images[..., -3:]], axis=-1), own * labels + (1.0 - own) * tf.gather(labels, partner)
