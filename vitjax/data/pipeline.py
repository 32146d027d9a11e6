"""tf.data input pipelines over TFDS datasets: per-process shards, exact resume, padded and masked evaluation.

Training streams are a pure function of (seed, position): epoch ``e`` is the process's shard shuffled with a seed
derived from ``e``, and every example's augmentation is keyed by its index in the stream. Starting at batch ``k``
therefore yields exactly the batches an uninterrupted run would have produced from ``k`` on. TFDS shuffles
examples when it writes a dataset, so reading shards in order and shuffling with a buffer is a full mix.
"""

import math
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vitjax.data import digits, preprocess

EMBEDDED = {"vitjax_digits": digits.VitjaxDigits}
_MAX_EPOCHS = 2**62


class DatasetUnavailableError(RuntimeError):
  """Raised when a dataset is known to TFDS but not prepared in ``data_dir`` and cannot be downloaded."""


def get_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The TFDS builder of ``config.dataset`` in ``config.data_dir``; unknown names fail with the valid choices."""
  return builder_by_name(config.dataset, data_dir=config.get("data_dir"))


def builder_by_name(name: str, *, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  if name in EMBEDDED:
    return EMBEDDED[name](data_dir=data_dir)
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(
        f"Unknown dataset {name!r}; choose an embedded one ({', '.join(EMBEDDED)}) or any TFDS name "
        f"(see tfds.list_builders(), e.g. cifar10, imagenet2012).") from None


def prepare(builder: tfds.core.DatasetBuilder) -> None:
  """Makes sure ``builder`` can be read: embedded data is written locally, public data downloaded if possible."""
  if builder.is_prepared():
    return
  try:
    builder.download_and_prepare()
  except Exception as e:  # noqa: BLE001 - any download failure gets the same actionable message.
    name = builder.info.name
    raise DatasetUnavailableError(
        f"Dataset {name!r} is not prepared in {builder.data_dir_root!r} and could not be downloaded "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). On a machine with internet access run "
        f"`tfds build {name} --data_dir=DIR` (manual datasets such as imagenet2012 need their archives in "
        f"DIR/downloads/manual), then copy DIR here and pass --config.data.data_dir=DIR.") from None


def num_classes(builder: tfds.core.DatasetBuilder, label_key: str = "label") -> int:
  """Number of classes of the dataset's ``label_key`` feature."""
  return builder.info.features[label_key].num_classes


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  return builder.info.splits[split].num_examples


def process_split(builder: tfds.core.DatasetBuilder, split: str, *, process_index: int, process_count: int,
                  drop_remainder: bool) -> str:
  """This process's disjoint share of ``split``; shares are equal when ``drop_remainder``, else within one."""
  return tfds.even_splits(split, n=process_count, drop_remainder=drop_remainder)[process_index]


def _read(builder, split: str, *, image_key: str, label_key: str, cache: bool) -> tf.data.Dataset:
  ds = builder.as_dataset(split=split, shuffle_files=False)
  ds = ds.map(lambda ex: {"image": ex[image_key], "label": ex[label_key]}, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.cache() if cache else ds


def _finalize(features, *, num_classes: int):
  """Model-ready features: float32 image and one-hot float32 ``labels``."""
  return {"image": tf.cast(features["image"], tf.float32),
          "labels": tf.one_hot(features["label"], num_classes, dtype=tf.float32)}


def train_dataset(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict, *, batch_size: int,
                  seed: int, start_batch: int = 0, process_index: int = 0, process_count: int = 1
                  ) -> tf.data.Dataset:
  """An endless stream of this process's training batches of ``batch_size``, starting at batch ``start_batch``.

  ``config`` is the data config: ``train_split``, ``pp_train``, ``shuffle_buffer``, ``cache``, feature keys.
  """
  image_key, label_key = config.get("image_key", "image"), config.get("label_key", "label")
  split = process_split(builder, config.train_split, process_index=process_index, process_count=process_count,
                        drop_remainder=True)
  num_examples = builder.info.splits[split].num_examples
  if num_examples == 0:
    raise ValueError(f"Training split {split!r} of {builder.info.name!r} has no examples for process {process_index}.")
  base = _read(builder, split, image_key=image_key, label_key=label_key, cache=config.get("cache", False))
  shuffle_buffer = config.get("shuffle_buffer", 10_000)
  start = start_batch * batch_size
  start_epoch, offset = divmod(start, num_examples)
  epoch_seed = lambda epoch: seed * 1_000_003 + epoch  # noqa: E731 - distinct, reproducible per-epoch seeds.
  stream = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(
      lambda epoch: base.shuffle(shuffle_buffer, seed=epoch_seed(epoch), reshuffle_each_iteration=False))
  stream = stream.skip(offset)
  indices = tf.data.Dataset.range(start, _MAX_EPOCHS)
  key = tf.constant([seed, process_index], tf.int64)
  augment = preprocess.parse(config.pp_train)
  classes = num_classes(builder, label_key)

  def process(index, features):
    example_seed = tf.random.experimental.stateless_fold_in(key, index)
    return _finalize(augment(features, example_seed), num_classes=classes)

  ds = tf.data.Dataset.zip(indices, stream).map(process, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_batches(builder: tfds.core.DatasetBuilder, split: str, *, batch_size: int, process_count: int = 1) -> int:
  """Batches every process runs so that the largest share is covered: the same count on all processes."""
  shares = tfds.even_splits(split, n=process_count, drop_remainder=False)
  return math.ceil(max(builder.info.splits[s].num_examples for s in shares) / batch_size)


def eval_dataset(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict, *, batch_size: int,
                 split: str | None = None, process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
  """This process's share of ``split`` (default ``config.eval_split``) once, in order, padded to whole batches.

  ``mask`` is 1 on real examples and 0 on the padding.
  """
  split = split or config.eval_split
  image_key, label_key = config.get("image_key", "image"), config.get("label_key", "label")
  share = process_split(builder, split, process_index=process_index, process_count=process_count,
                        drop_remainder=False)
  transform = preprocess.parse(config.pp_eval)
  classes = num_classes(builder, label_key)
  no_seed = tf.zeros([2], tf.int64)  # Evaluation preprocessing is deterministic.

  def process(features):
    out = _finalize(transform(features, no_seed), num_classes=classes)
    return {**out, "mask": tf.constant(1.0)}

  ds = _read(builder, share, image_key=image_key, label_key=label_key, cache=config.get("cache", False))
  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors(
      tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)).repeat()
  total = eval_batches(builder, split, batch_size=batch_size, process_count=process_count) * batch_size
  return ds.concatenate(padding).take(total).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def as_numpy(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Iterates a dataset as dicts of numpy arrays."""
  return iter(tfds.as_numpy(ds))
