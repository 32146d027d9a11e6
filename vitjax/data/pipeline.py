"""tf.data input pipelines over any source: per-process shards, exact resume, padded and masked evaluation.

Training streams are a pure function of (seed, position): epoch ``e`` is the process's shard shuffled with a seed
derived from ``e``, every example's augmentation is keyed by its index in the stream and every batch's Mixup or
CutMix by the batch's index. Starting at batch ``k`` therefore yields exactly the batches an uninterrupted run
would have produced from ``k`` on. TFDS shuffles examples when it writes a dataset, so reading shards in order
and shuffling a buffer of still-encoded examples is a full mix; folder sources shuffle a whole epoch of file
positions.

Everything is driven by the data config (``config.data``, every key declared in ``vitjax/configs/common.py``):
  dataset, data_dir, image_key, label_key   which data (``catalog.from_config``): a TFDS name or a folder kind
  folder, strict                            the root of a folder dataset; fail on a corrupt file instead of skipping
  train_split, eval_split, classes          TFDS-style split strings; the label ids (or names) to keep, in order
  pp_train, pp_eval                         preprocessing specs (``preprocess``)
  seq_lens                                  NaFlex: the patch-sequence lengths of ``{seq_len}`` in them (``seqlens``)
  target, target_split, target_pp, ...      a second, unlabelled source streamed beside the first (``with_target``)
  mixup                                     batch mixing (``mixing.Mixing``)
  shuffle_buffer, cache, threads            host memory and CPU use
"""

import math
import re
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from vitjax.data import failures, mixing, preprocess, seqlens
from vitjax.data.source import UNREADABLE, InputPipelineError, Source, UnreadableImageError
from vitjax.data.tfds_source import TfdsSource
from vitjax.errors import ConfigError

_MAX_EPOCHS = 2**62
_LOG_FIRST_SKIPS, _LOG_SKIPS_EVERY = 10, 100


def _source(builder: Source | tfds.core.DatasetBuilder) -> Source:
  if isinstance(builder, Source):
    return builder
  if isinstance(builder, tfds.core.DatasetBuilder):
    return TfdsSource(builder)
  raise TypeError(f"Expected a data source from data.from_config, got {type(builder).__name__}.")


def prepare(builder: Source) -> None:
  """Makes sure the data can be read: TFDS data is prepared or downloaded, folders are scanned and checked."""
  _source(builder).prepare()


def num_classes(builder: Source) -> int:
  """Number of classes (after ``config.data.classes``): the size of the model's head."""
  return _source(builder).num_classes()


def class_names(builder: Source) -> list[str]:
  """Class names in label-id order, to save beside checkpoints so predictions are readable."""
  return _source(builder).class_names()


def num_examples(builder: Source, split: str) -> int:
  return _source(builder).num_examples(split)


def _options(config: ml_collections.ConfigDict) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  if config.threads:
    options.threading.private_threadpool_size = config.threads
  return options


def _finalize(features, *, num_classes: int):
  """Model-ready features: float32 image and float32 ``labels`` (one-hot or multi-hot)."""
  out = {"image": tf.cast(features["image"], tf.float32)}
  if "labels" in features:
    out["labels"] = tf.cast(features["labels"], tf.float32)
  else:
    out["labels"] = tf.one_hot(features["label"], num_classes, dtype=tf.float32)
  out.update({k: v for k, v in features.items() if k in ("_skipped", "_skipped_file")})
  return out


def train_dataset(
  builder: Source,
  config: ml_collections.ConfigDict,
  *,
  batch_size: int,
  seed: int,
  start_batch: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> tf.data.Dataset:
  """An endless stream of this process's training batches of ``batch_size``, starting at batch ``start_batch``."""
  source = _source(builder)
  share = source.share(
    config.train_split, index=process_index, count=process_count, drop_remainder=True, cache=config.cache
  )
  if share.size == 0:
    raise ConfigError(
      f"Training split {config.train_split!r} of {source.name!r} has no examples for process "
      f"{process_index} of {process_count}."
    )
  buffer = share.size if source.records_are_small else config.shuffle_buffer
  start = start_batch * batch_size
  start_epoch, offset = divmod(start, share.size)
  epoch_seed = lambda epoch: seed * 1_000_003 + epoch  # noqa: E731 - distinct, reproducible per-epoch seeds.
  stream = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(
    lambda epoch: share.records.shuffle(buffer, seed=epoch_seed(epoch), reshuffle_each_iteration=False)
  )
  pairs = share.load(
    failures.ignore_reads(
      tf.data.Dataset.zip(tf.data.Dataset.range(start, _MAX_EPOCHS), stream.skip(offset)), strict=config.strict
    ),
    not preprocess.decodes(seqlens.at_seq_len(config).pp_train),
  )
  key = tf.constant([seed, process_index], tf.int64)
  augment = seqlens.train_preprocessing(config)
  classes = source.num_classes()

  def process(index, features):
    example_seed = tf.random.experimental.stateless_fold_in(key, index)
    return _finalize(augment(features, example_seed, index // batch_size), num_classes=classes)

  ds = failures.guard(pairs, process, strict=config.strict, first_key=start)
  ds = seqlens.fit_fills(ds, config, first=start, batch_size=batch_size).batch(batch_size, drop_remainder=True)
  mixer = mixing.from_config(config.mixup)
  if mixer.enabled:
    mix_key = tf.random.experimental.stateless_split(key, 1)[0]
    ds = tf.data.Dataset.zip(tf.data.Dataset.range(start_batch, _MAX_EPOCHS), ds).map(
      lambda index, batch: mixer(batch, tf.random.experimental.stateless_fold_in(mix_key, index)),
      num_parallel_calls=tf.data.AUTOTUNE,
    )
  return ds.with_options(_options(config)).prefetch(tf.data.AUTOTUNE)


def target_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The data config as the target source sees it: its splits and preprocessing in the places of the labelled
  source's, and no batch mixing (the target has no labels to mix)."""
  view = config.copy_and_resolve_references()
  view.train_split, view.eval_split = config.target_split, config.target_eval_split
  view.pp_train, view.pp_eval = config.target_pp, config.target_pp_eval
  view.mixup.mixup_alpha = view.mixup.cutmix_alpha = 0.0
  return view


def with_target(train: tf.data.Dataset, target: tf.data.Dataset) -> tf.data.Dataset:
  """Training batches with the target stream's images beside them as ``target_image`` (its labels dropped).

  Both streams are functions of their own position, so zipping them keeps resume exact: a run restarted at batch
  ``k`` builds both from ``k``.
  """
  return tf.data.Dataset.zip(train, target).map(
    lambda batch, other: {**batch, "target_image": other["image"]}, num_parallel_calls=tf.data.AUTOTUNE
  )


def eval_batches(builder: Source, split: str, *, batch_size: int, process_count: int = 1) -> int:
  """Batches every process runs so that the largest share is covered: the same count on all processes."""
  source = _source(builder)
  largest = max(
    source.share_size(split, index=i, count=process_count, drop_remainder=False) for i in range(process_count)
  )
  return math.ceil(largest / batch_size)


def eval_dataset(
  builder: Source,
  config: ml_collections.ConfigDict,
  *,
  batch_size: int,
  split: str | None = None,
  process_index: int = 0,
  process_count: int = 1,
) -> tf.data.Dataset:
  """This process's share of ``split`` (default ``config.eval_split``) once, in order, padded to whole batches; for
  NaFlex at the longest of ``config.seq_lens`` (``seqlens.at_seq_len`` picks another).

  ``mask`` is 1 on real examples and 0 on the padding and on slots whose image file could not be read.
  """
  config = seqlens.at_seq_len(config)
  split = split or config.eval_split
  source = _source(builder)
  total = eval_batches(source, split, batch_size=batch_size, process_count=process_count) * batch_size
  if total == 0:
    raise ConfigError(f"Evaluation split {split!r} of {source.name!r} has no examples.")
  share = source.share(split, index=process_index, count=process_count, drop_remainder=False, cache=config.cache)
  transform = preprocess.parse(config.pp_eval)
  classes = source.num_classes()
  no_seed = tf.zeros([2], tf.int64)  # Evaluation preprocessing is deterministic.

  def process(key, features):
    out = _finalize(transform(features, no_seed), num_classes=classes)
    mask = tf.cast(tf.equal(out["_skipped"], 0), tf.float32) if "_skipped" in out else tf.constant(1.0)
    return {**out, "mask": mask}

  pairs = share.load(
    failures.ignore_reads(tf.data.Dataset.zip(tf.data.Dataset.range(_MAX_EPOCHS), share.records), strict=config.strict),
    not preprocess.decodes(config.pp_eval),
  )
  ds = failures.guard(pairs, process, strict=config.strict)
  if not ds.element_spec["image"].shape.is_fully_defined():
    raise ConfigError(
      f"config.data.pp_eval={config.pp_eval!r} gives images of varying size "
      f"{ds.element_spec['image'].shape}; end it with a fixed-size op such as resize or center_crop."
    )
  padding = tf.data.Dataset.from_tensors(
    tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
  ).repeat()
  ds = ds.concatenate(padding).take(total).batch(batch_size, drop_remainder=True)
  return ds.with_options(_options(config)).prefetch(tf.data.AUTOTUNE)


def _unreadable_message(message: str) -> str:
  match = re.search(r"assertion failed: \[(.*?)\] \[(.*?)\]", message, re.DOTALL)
  return f"{match.group(1)} {match.group(2)}" if match else message


def _failed_record_message(message: str) -> str:
  match = re.search(r"assertion failed: \[(" + failures.FAILED_RECORD + r"[^\]]*)\]", message)
  return match.group(1) if match else _reason(message)


def _files_text(files: Sequence[str]) -> str:
  shown = ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
  return f"file {shown}" if len(files) == 1 else f"one of the files {shown}"


def _reason(message: str) -> str:
  """TensorFlow's error message without the op and function names it wraps around the reason."""
  message = re.sub(r"\{\{function_node [^}]*\}\}|\[Op:\w+\]|\bname:\s*$", "", message.strip().splitlines()[0])
  return message.strip()


def as_numpy(
  ds: tf.data.Dataset, *, where: str = "this host", counts: dict[str, int] | None = None, files: Sequence[str] = ()
) -> Iterator[dict[str, np.ndarray]]:
  """Iterates a dataset as dicts of numpy arrays, logging (and removing) the record of skipped unreadable files
  and failed records (``failures``) and adding their number to ``counts["skipped"]`` if given.

  A corrupt file under ``config.data.strict`` ends the iteration with an ``UnreadableImageError`` naming it and
  ``where`` (the host), a record that failed with an ``InputPipelineError`` naming it and ``where``, a data file
  that cannot be read (TensorFlow's ``DataLossError``, which does not name it) with one naming ``files`` (those the
  dataset reads, e.g. ``Source.files``), any other failure of the pipeline with one naming ``where``.
  """
  iterator = iter(tfds.as_numpy(ds))
  skipped = events = 0
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      break
    except tf.errors.OpError as e:
      if UNREADABLE in e.message:
        raise UnreadableImageError(f"{_unreadable_message(e.message)} (on {where})") from None
      if failures.FAILED_RECORD in e.message:
        raise InputPipelineError(f"{_failed_record_message(e.message)} (on {where})") from None
      if isinstance(e, tf.errors.DataLossError) and files:
        raise InputPipelineError(
          f"A data file could not be read on {where}: {_files_text(files)} ({_reason(e.message)}); "
          "config.data.strict=False skips the rest of such a file."
        ) from None
      raise InputPipelineError(f"The input pipeline failed on {where}: {type(e).__name__}: {_reason(e.message)}") from e
    skips, paths, records = (batch.pop(key, None) for key in failures.SKIP_KEYS)
    for count, path, record in zip(*(() if skips is None else (skips, paths, records))):
      if count:
        skipped, events = skipped + int(count), events + 1
        if counts is not None:
          counts["skipped"] = counts.get("skipped", 0) + int(count)
        if events <= _LOG_FIRST_SKIPS or events % _LOG_SKIPS_EVERY == 0:
          logging.warning(
            "Skipped %s on %s (%d skipped so far in this pass); config.data.strict=True stops at the first one "
            "instead.",
            f"unreadable image file {path.decode()}"
            if path
            else f"record {record} of the stream, which could not be read or preprocessed",
            where,
            skipped,
          )
    yield batch
  if skipped:
    logging.warning("%d unreadable files or failed records were skipped in this pass over the data.", skipped)
