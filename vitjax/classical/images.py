"""The images the features see: what `--mode=eval` reads, back in uint8 pixels at the baseline's size.

A split is read once through the deep models' own eval input (`data.eval_dataset` with `config.data.pp_eval`:
decoding, resize or crop, class selection, and masks that drop padding and unreadable files). Its float images,
in [-1, 1] or mean/std normalised, go back to [0, 255] by inverting the spec's value ops (`data.pixel_affine`),
are resized on the host to `image_size` x `image_size` with scikit-image (bilinear, anti-aliased when shrinking)
and rounded to uint8: the natural input of HOG, LBP, SIFT and colour histograms, at a quarter of float32's memory.
"""

from collections.abc import Iterable, Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging
from skimage import transform

from vitjax import data
from vitjax.data import preprocess
from vitjax.errors import ConfigError


def to_uint8(images: np.ndarray, pp_eval: str, size: int) -> np.ndarray:
  """uint8 (N, size, size, C) pixels of a batch of `pp_eval` outputs (N, H, W, C)."""
  scale, offset = data.pixel_affine(pp_eval)
  pixels = (images.astype(np.float64) - offset) / scale
  if pixels.shape[1:3] != (size, size):
    pixels = transform.resize(pixels, (len(pixels), size, size, pixels.shape[-1]), order=1, preserve_range=True)
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def split_batches(
  source: data.Source, data_config: ml_collections.ConfigDict, *, split: str, size: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(uint8 images, integer labels) of every real example of `split`, batch by batch, in the split's order."""
  ds = data.eval_dataset(source, data_config, split=split, batch_size=batch_size)
  for batch in data.as_numpy(ds):
    real = batch["mask"] > 0
    if real.any():
      yield to_uint8(batch["image"][real], data_config.pp_eval, size), batch["labels"][real].argmax(axis=1)


def proportional_quotas(counts: np.ndarray, total: int) -> np.ndarray:
  """How many of each class a stratified sample of `total` holds: proportional, rounded by largest remainder."""
  exact = counts * total / counts.sum()
  quotas = np.floor(exact).astype(np.int64)
  quotas[np.argsort(-(exact - quotas), kind="stable")[: total - quotas.sum()]] += 1
  return quotas


def stratified_sample(
  batches: Iterable[tuple[np.ndarray, np.ndarray]], *, num_classes: int, cap: int, seed: int
) -> tuple[np.ndarray, np.ndarray, int]:
  """(images, labels, examples seen): every example of `batches` if there are at most `cap`, else a seeded
  stratified sample of `cap` with the class proportions of the whole stream.

  One pass in bounded memory: each example draws a random key, and whenever more than 3 * cap are held only the
  2 * cap lowest keys stay (so the held ones always include the 2 * cap lowest so far: a uniform sample). At the
  end each class takes its quota (from the counts of the whole stream) of its lowest keys, and a class with too
  few held leaves its places to the lowest keys left.
  """
  rng = np.random.default_rng(seed)
  images, labels, keys = [], [], []
  counts, seen = np.zeros(num_classes, np.int64), 0
  for batch_images, batch_labels in batches:
    images.append(batch_images)
    labels.append(batch_labels)
    keys.append(rng.random(len(batch_labels)))
    counts += np.bincount(batch_labels, minlength=num_classes)
    seen += len(batch_labels)
    if sum(map(len, keys)) > 3 * cap:
      held = np.concatenate(keys)
      keep = np.sort(np.argpartition(held, 2 * cap)[: 2 * cap])
      images, labels, keys = [np.concatenate(images)[keep]], [np.concatenate(labels)[keep]], [held[keep]]
  if not seen:
    raise ConfigError("The training split has no readable examples.")
  images, labels, keys = np.concatenate(images), np.concatenate(labels), np.concatenate(keys)
  if seen <= cap:
    return images, labels, seen
  chosen = np.zeros(len(keys), bool)
  for label, quota in enumerate(proportional_quotas(counts, cap)):
    members = np.flatnonzero(labels == label)
    chosen[members[np.argsort(keys[members])[:quota]]] = True
  rest = np.flatnonzero(~chosen)
  chosen[rest[np.argsort(keys[rest])[: cap - chosen.sum()]]] = True
  return images[chosen], labels[chosen], seen


def load(items: Sequence[str | np.ndarray], pp_eval: str, size: int) -> np.ndarray:
  """uint8 (N, size, size, C) pixels of new images, as the training images were made: image files (any format
  TensorFlow decodes) or decoded uint8 arrays (H, W) or (H, W, C), through `pp_eval`, then `to_uint8`."""
  spec = preprocess.parse(pp_eval)
  out = []
  for item in items:
    if isinstance(item, str):
      image = tf.io.decode_image(tf.io.read_file(item), expand_animations=False)
    else:
      array = np.asarray(item)
      image = tf.convert_to_tensor(array[..., None] if array.ndim == 2 else array)
    features = spec({"image": image}, tf.zeros([2], tf.int64))
    out.append(to_uint8(tf.cast(features["image"], tf.float32).numpy()[None], pp_eval, size))
  return np.concatenate(out)


def log_sample(split: str, kept: int, seen: int, cap: int) -> None:
  if kept < seen:
    logging.info(
      "Fitting on a stratified sample of %d of the %d examples of %r (config.baseline.max_train_examples=%d).",
      kept,
      seen,
      split,
      cap,
    )
  else:
    logging.info("Fitting on all %d examples of %r.", seen, split)
