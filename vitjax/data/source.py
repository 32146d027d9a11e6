"""What every source of examples provides, and the helpers the kinds of source share.

A source knows its class names, the size of every split, and each process's share of a split. A share is a
dataset of cheap *records* in a fixed order (encoded TFDS examples, or file positions) that the pipeline shuffles,
plus a ``load`` step that turns records into decoded examples::

    {"image": uint8 [h, w, c] (or the encoded string), "label": int64}     single-label sources
    {"image": ..., "labels": float32 [num_classes] multi-hot}              multi-label sources

Split strings follow TFDS everywhere: ``train``, ``train[:98%]``, ``train[98%:]``, ``train+validation``. The kinds
of source live in ``tfds_source`` (TFDS datasets, the embedded one included) and ``folders`` (image folders).
"""

import abc
import dataclasses
import re
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from vitjax.errors import ConfigError

# Starts the assertion message of an unreadable image file, so that the host can tell it from other errors.
UNREADABLE = "Unreadable image file"


class DatasetUnavailableError(RuntimeError):
  """Raised when a dataset is known to TFDS but not prepared in ``data_dir`` and cannot be downloaded."""


class InputPipelineError(RuntimeError):
  """The input pipeline failed (a shard that cannot be read, an op that failed on a record); the message names
  the host and TensorFlow's reason, which names the file where it knows it."""


class UnreadableImageError(ValueError):
  """Raised for a corrupt image file when ``config.data.strict`` is set (or too many in a row otherwise)."""


@dataclasses.dataclass
class Share:
  """One process's part of a split: ``records`` in a fixed order, how many, and how to load them.

  ``load(ds, decode)`` maps a dataset of ``(key, record)`` pairs to ``(key, features)`` pairs, in order;
  ``decode=False`` leaves TFDS images encoded for a spec that decodes them itself, unless the share caches
  decoded examples (the decoding ops accept decoded images).
  """

  records: tf.data.Dataset
  size: int
  load: Callable[[tf.data.Dataset, bool], tf.data.Dataset]


def resolve_classes(classes: Sequence[int | str] | None, names: Sequence[str]) -> list[int] | None:
  """The label ids that ``config.data.classes`` keeps, in its order (ids or class names); None keeps all."""
  if not classes:
    return None
  if isinstance(classes, (int, str)):
    raise ConfigError(f"config.data.classes must be a tuple of label ids or names, got {classes!r}.")
  ids = []
  for c in classes:
    if isinstance(c, str) and c in names:
      ids.append(list(names).index(c))
    elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(names):
      ids.append(int(c))
    else:
      raise ConfigError(
        f"config.data.classes entry {c!r} is neither a label id in 0..{len(names) - 1} nor one of "
        f"the class names {list(names)[:20]}{'...' if len(names) > 20 else ''}."
      )
  if len(set(ids)) != len(ids):
    raise ConfigError(f"config.data.classes={tuple(classes)} names a class twice.")
  return ids


def even_bounds(size: int, *, index: int, count: int, drop_remainder: bool) -> tuple[int, int]:
  """[start, end) of share ``index`` of ``count``: equal sizes when ``drop_remainder``, else within one."""
  if drop_remainder:
    each = size // count
    return index * each, (index + 1) * each
  return index * size // count, (index + 1) * size // count


def split_names(split: str) -> list[str]:
  """The named splits a TFDS-style split string reads, e.g. ``train[:90%]+extra`` -> [train, extra]."""
  names = []
  for part in split.split("+"):
    match = re.fullmatch(r"\s*([^\[\]+\s]+)\s*(\[[^\]]*\])?\s*", part)
    if not match:
      raise ConfigError(f"Cannot parse split {split!r}; use e.g. 'train', 'train[:90%]' or 'train+val'.")
    names.append(match.group(1))
  return names


class Source(abc.ABC):
  """A dataset: classes, split sizes and per-process shares."""

  name: str
  multilabel: bool = False
  # Records are small (file positions): the pipeline then shuffles a whole epoch instead of a buffer.
  records_are_small: bool = False

  def prepare(self) -> None:  # noqa: B027 - most sources need no preparation.
    """Makes the data readable and fails with a clear message if it is not."""

  @abc.abstractmethod
  def class_names(self) -> list[str]: ...

  def num_classes(self) -> int:
    return len(self.class_names())

  def num_examples(self, split: str) -> int:
    return self.share_size(split, index=0, count=1, drop_remainder=False)

  @abc.abstractmethod
  def share_size(self, split: str, *, index: int, count: int, drop_remainder: bool) -> int: ...

  @abc.abstractmethod
  def share(
    self, split: str, *, index: int = 0, count: int = 1, drop_remainder: bool = False, cache: bool = False
  ) -> Share: ...

  def files(self, split: str, *, index: int = 0, count: int = 1, drop_remainder: bool = False) -> list[str]:
    """The data files (TFRecord shards) that share ``index`` of ``count`` of ``split`` reads, to name when one
    cannot be read; none where each image is its own file (the error names it)."""
    del split, index, count, drop_remainder
    return []
