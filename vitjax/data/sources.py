"""Where examples come from: TFDS datasets, folders of class subfolders, folders of images with a CSV of labels.

A source knows its class names, the size of every split, and each process's share of a split. A share is a
dataset of cheap *records* in a fixed order (encoded TFDS examples, or file positions) that the pipeline shuffles,
plus a ``load`` step that turns records into decoded examples::

    {"image": uint8 [h, w, c] (or the encoded string), "label": int64}     single-label sources
    {"image": ..., "labels": float32 [num_classes] multi-hot}              multi-label sources

Folder sources add ``_skipped`` (how many unreadable files were passed over to fill this slot) and
``_skipped_file`` (the first of them): a corrupt or truncated file is replaced by the next readable one of the
share, so every position of the stream still holds one example and resume stays exact. The pipeline masks such
slots out of evaluation and the host logs them (``pipeline.as_numpy``).

Split strings follow TFDS everywhere: ``train``, ``train[:98%]``, ``train[98%:]``, ``train+validation``. Folder
files are ordered by a hash of their relative path, so slices are random subsets that stay stable when files are
added.
"""

import abc
import csv
import dataclasses
import hashlib
import os
import re
import types
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Consecutive unreadable files a training slot may pass over before the pipeline gives up.
MAX_FALLBACKS = 16
UNREADABLE = "Unreadable image file"


class DatasetUnavailableError(RuntimeError):
  """Raised when a dataset is known to TFDS but not prepared in ``data_dir`` and cannot be downloaded."""


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
    raise ValueError(f"config.data.classes must be a tuple of label ids or names, got {classes!r}.")
  ids = []
  for c in classes:
    if isinstance(c, str) and c in names:
      ids.append(list(names).index(c))
    elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(names):
      ids.append(int(c))
    else:
      raise ValueError(
        f"config.data.classes entry {c!r} is neither a label id in 0..{len(names) - 1} nor one of "
        f"the class names {list(names)[:20]}{'...' if len(names) > 20 else ''}."
      )
  if len(set(ids)) != len(ids):
    raise ValueError(f"config.data.classes={tuple(classes)} names a class twice.")
  return ids


def even_bounds(size: int, *, index: int, count: int, drop_remainder: bool) -> tuple[int, int]:
  """[start, end) of share ``index`` of ``count``: equal sizes when ``drop_remainder``, else within one."""
  if drop_remainder:
    each = size // count
    return index * each, (index + 1) * each
  return index * size // count, (index + 1) * size // count


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


class TfdsSource(Source):
  """A TFDS dataset; ``label_key`` may name a ClassLabel or a Sequence of ClassLabels (multi-label)."""

  def __init__(
    self,
    builder: tfds.core.DatasetBuilder,
    *,
    image_key: str = "image",
    label_key: str = "label",
    classes: Sequence[int | str] | None = None,
  ):
    self.builder = builder
    self.name = builder.info.name
    features = builder.info.features
    for key, role in ((image_key, "image_key"), (label_key, "label_key")):
      if key not in features:
        raise ValueError(
          f"config.data.{role}={key!r} is not a feature of {self.name!r}; its features are: {', '.join(features)}."
        )
    label = features[label_key]
    if isinstance(label, tfds.features.ClassLabel):
      all_names = label.names
    elif isinstance(label, tfds.features.Sequence) and isinstance(label.feature, tfds.features.ClassLabel):
      self.multilabel, all_names = True, label.feature.names
    else:
      raise ValueError(
        f"config.data.label_key={label_key!r} of {self.name!r} is a {type(label).__name__}, not a "
        f"class label (ClassLabel, or a Sequence of them for multi-label data)."
      )
    self.image_key, self.label_key = image_key, label_key
    self._all_names = list(all_names)
    self._keep = resolve_classes(classes, all_names)
    self._image_feature = features[image_key]
    self._encoded = isinstance(self._image_feature, tfds.features.Image)
    self._sizes: dict[str, int] = {}

  def prepare(self) -> None:
    if self.builder.is_prepared():
      return
    try:
      self.builder.download_and_prepare()
    except Exception as e:  # noqa: BLE001 - any download failure gets the same actionable message.
      raise DatasetUnavailableError(
        f"Dataset {self.name!r} is not prepared in {self.builder.data_dir_root!r} and could not be downloaded "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). On a machine with internet access "
        f"run `tfds build {self.name} --data_dir=DIR` (manual datasets such as imagenet2012 need their archives "
        f"in DIR/downloads/manual), then copy DIR here and pass --config.data.data_dir=DIR."
      ) from None

  def class_names(self) -> list[str]:
    return self._all_names if self._keep is None else [self._all_names[i] for i in self._keep]

  def _split(self, split: str, index: int, count: int, drop_remainder: bool):
    return tfds.even_splits(split, n=count, drop_remainder=drop_remainder)[index]

  def share_size(self, split: str, *, index: int, count: int, drop_remainder: bool) -> int:
    share = self._split(split, index, count, drop_remainder)
    if self._keep is None or self.multilabel:
      return self.builder.info.splits[share].num_examples
    key = repr(share)
    if key not in self._sizes:  # Filtering by class: count the kept labels once, reading labels only.
      kept = tf.constant(np.isin(np.arange(len(self._all_names)), self._keep))
      labels = self.builder.as_dataset(
        split=share, shuffle_files=False, decoders=tfds.decode.PartialDecoding({self.label_key: True})
      )
      self._sizes[key] = int(
        labels.map(lambda ex: tf.cast(tf.gather(kept, ex[self.label_key]), tf.int64)).reduce(
          tf.constant(0, tf.int64), lambda total, x: total + x
        )
      )
    return self._sizes[key]

  def _select(self, example):
    label = example[self.label_key]
    num_all = len(self._all_names)
    if self.multilabel:
      multi_hot = tf.minimum(tf.reduce_sum(tf.one_hot(label, num_all), axis=0), 1.0)
      if self._keep is not None:
        multi_hot = tf.gather(multi_hot, self._keep)
      return {"image": example[self.image_key], "labels": multi_hot}
    if self._keep is not None:
      remap = np.full(num_all, -1, np.int64)
      remap[self._keep] = np.arange(len(self._keep))
      label = tf.gather(tf.constant(remap), label)
    return {"image": example[self.image_key], "label": label}

  def _decode(self, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {**example, "image": self._image_feature.decode_example(example["image"])}

  def share(
    self, split: str, *, index: int = 0, count: int = 1, drop_remainder: bool = False, cache: bool = False
  ) -> Share:
    share = self._split(split, index, count, drop_remainder)
    decoders = tfds.decode.PartialDecoding(
      {self.image_key: True, self.label_key: True},
      decoders={self.image_key: tfds.decode.SkipDecoding()} if self._encoded else None,
    )
    ds = self.builder.as_dataset(split=share, shuffle_files=False, decoders=decoders)
    ds = ds.map(self._select, num_parallel_calls=tf.data.AUTOTUNE)
    if self._keep is not None and not self.multilabel:
      ds = ds.filter(lambda ex: ex["label"] >= 0)
    decoded = cache and self._encoded
    if decoded:  # Decoding once beats decoding every epoch; both decoding ops pass decoded images through.
      ds = ds.map(self._decode, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
      ds = ds.cache()

    def load(pairs: tf.data.Dataset, decode: bool) -> tf.data.Dataset:
      if not (decode and self._encoded) or decoded:
        return pairs
      return pairs.map(lambda key, ex: (key, self._decode(ex)), num_parallel_calls=tf.data.AUTOTUNE)

    return Share(ds, self.share_size(split, index=index, count=count, drop_remainder=drop_remainder), load)


@dataclasses.dataclass
class _Files:
  """The files of one split folder and their labels (an int per file, or a tuple of ints for multi-label)."""

  paths: list[str]
  labels: list


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _stable_order(relative_paths: Sequence[str]) -> np.ndarray:
  """A fixed pseudo-random order (by a hash of the path), so that split slices are random subsets."""
  return np.argsort([hashlib.md5(p.encode()).hexdigest() for p in relative_paths], kind="stable")


def split_names(split: str) -> list[str]:
  """The split folders a TFDS-style split string reads, e.g. ``train[:90%]+extra`` -> [train, extra]."""
  names = []
  for part in split.split("+"):
    match = re.fullmatch(r"\s*([^\[\]+\s]+)\s*(\[[^\]]*\])?\s*", part)
    if not match:
      raise ValueError(f"Cannot parse split {split!r}; use e.g. 'train', 'train[:90%]' or 'train+val'.")
    names.append(match.group(1))
  return names


class _FolderSourceBase(Source):
  """Shared by the folder sources: split resolution, shares, and loading with fallback for unreadable files."""

  records_are_small = True

  def __init__(
    self,
    root: str,
    *,
    train_split: str = "train",
    splits: Sequence[str] = (),
    classes: Sequence[int | str] | None = None,
    strict: bool = False,
  ):
    if not root:
      raise ValueError(f"config.data.folder must name the root folder of the {self.name!r} dataset.")
    self.root, self.train_split, self.strict = root, train_split, strict
    self._splits_to_check = [train_split, *splits]
    self._classes = classes
    self._scans: dict[str, _Files] = {}
    self._resolved: dict[str, _Files] = {}
    self._names: list[str] | None = None
    self._all_names: list[str] = []
    self._keep: list[int] | None = None

  @abc.abstractmethod
  def _scan(self, name: str) -> tuple[list[str], list]:
    """Reads split folder ``name``: its file paths and, per file, its class name (or tuple of class names)."""

  def _class_ids(self, name: str, paths: list[str], label_names: list) -> _Files:
    """Turns class names into ids of the training split's classes, applying ``config.data.classes``."""
    used = set(label_names) if not self.multilabel else {n for names in label_names for n in names}
    unknown = sorted(used - set(self._all_names))
    if unknown:
      raise ValueError(
        f"Split {name!r} of {self.root!r} has classes {unknown[:20]} that the training split "
        f"{self.train_split!r} lacks; the training split defines the classes."
      )
    ids = {n: i for i, n in enumerate(self._all_names)}
    if self._keep is not None:
      ids = {self._all_names[old]: new for new, old in enumerate(self._keep)}
    if self.multilabel:
      return _Files(paths, [tuple(sorted(ids[n] for n in names if n in ids)) for names in label_names])
    kept = [i for i, n in enumerate(label_names) if n in ids]
    return _Files([paths[i] for i in kept], [ids[label_names[i]] for i in kept])

  def _read_split(self, name: str) -> _Files:
    self.class_names()
    if name not in self._scans:
      self._scans[name] = self._class_ids(name, *self._scan(name))
    return self._scans[name]

  def class_names(self) -> list[str]:
    if self._names is None:
      raw = {name: self._scan(name) for name in split_names(self.train_split)}
      used = set()
      for _, label_names in raw.values():
        used |= set(label_names) if not self.multilabel else {n for names in label_names for n in names}
      self._all_names = sorted(used)
      self._keep = resolve_classes(self._classes, self._all_names)
      self._names = self._all_names if self._keep is None else [self._all_names[i] for i in self._keep]
      self._scans.update({name: self._class_ids(name, *scan) for name, scan in raw.items()})
    return list(self._names)

  def prepare(self) -> None:
    if not tf.io.gfile.isdir(self.root):
      raise ValueError(f"config.data.folder={self.root!r} is not a folder.")
    for split in self._splits_to_check:
      self.num_examples(split)

  def _resolve(self, split: str) -> _Files:
    """The files of a split string, slices applied, in the fixed order."""
    if split in self._resolved:
      return self._resolved[split]
    ordered = {}
    for name in split_names(split):
      files = self._read_split(name)
      order = _stable_order([os.path.relpath(p, self.root) for p in files.paths])
      ordered[name] = _Files([files.paths[i] for i in order], [files.labels[i] for i in order])
    try:
      instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(
        {name: types.SimpleNamespace(num_examples=len(files.paths)) for name, files in ordered.items()}
      )
    except (ValueError, AssertionError) as e:
      raise ValueError(f"Bad split {split!r} for {self.root!r}: {e}") from None
    paths, labels = [], []
    for instruction in instructions:
      files = ordered[instruction.splitname]
      paths += files.paths[instruction.from_ : instruction.to]
      labels += files.labels[instruction.from_ : instruction.to]
    if not paths:
      raise ValueError(f"Split {split!r} of {self.root!r} selects no images.")
    self._resolved[split] = _Files(paths, labels)
    return self._resolved[split]

  def share_size(self, split: str, *, index: int, count: int, drop_remainder: bool) -> int:
    start, end = even_bounds(len(self._resolve(split).paths), index=index, count=count, drop_remainder=drop_remainder)
    return end - start

  def share(
    self, split: str, *, index: int = 0, count: int = 1, drop_remainder: bool = False, cache: bool = False
  ) -> Share:
    del cache  # Records are file positions; caching decoded images is left to the OS file cache.
    files = self._resolve(split)
    start, end = even_bounds(len(files.paths), index=index, count=count, drop_remainder=drop_remainder)
    files = _Files(files.paths[start:end], files.labels[start:end])
    records = tf.data.Dataset.range(len(files.paths))
    return Share(records, len(files.paths), self._loader(files))

  def _loader(self, files: _Files):
    """Loads file positions with fallback: an unreadable file is replaced by the next readable one."""
    paths = tf.constant(files.paths if files.paths else [""], tf.string)
    count = len(files.paths)
    num_classes = self.num_classes()
    if self.multilabel:
      values = tf.constant(np.concatenate([np.asarray(ls, np.int64) for ls in files.labels] or [[]]), tf.int64)
      splits = tf.constant(np.cumsum([0] + [len(ls) for ls in files.labels]), tf.int64)
    else:
      labels = tf.constant(np.asarray(files.labels, np.int64))
    attempts = 1 if self.strict else MAX_FALLBACKS
    message = (
      f"{UNREADABLE} (config.data.strict=True):"
      if self.strict
      else f"{UNREADABLE}: {MAX_FALLBACKS} files in a row could not be decoded, starting at"
    )

    def example(position, attempt):
      k = (position + attempt) % count
      features = {
        "image": tf.io.decode_image(tf.io.read_file(paths[k]), channels=3, expand_animations=False),
        "_skipped": attempt,
        "_skipped_file": tf.where(attempt > 0, paths[position], ""),
      }
      if self.multilabel:
        ids = values[splits[k] : splits[k + 1]]
        features["labels"] = tf.minimum(tf.reduce_sum(tf.one_hot(ids, num_classes), axis=0), 1.0)
      else:
        features["label"] = labels[k]
      return features

    def unreadable(position):
      check = tf.debugging.Assert(False, [message, paths[position]])
      with tf.control_dependencies([check]):
        return example(position, tf.constant(attempts, tf.int64))

    def one(key, position):
      tries = tf.data.Dataset.range(attempts).map(lambda attempt: example(position, attempt)).ignore_errors()
      return (
        tries.concatenate(tf.data.Dataset.from_tensors(position).map(unreadable))
        .take(1)
        .map(lambda features: (key, features))
      )

    def load(pairs: tf.data.Dataset, decode: bool) -> tf.data.Dataset:
      del decode  # Files are always decoded here: that is how unreadable ones are found.
      return pairs.interleave(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return load


class FolderSource(_FolderSourceBase):
  """Images in ``root/<split>/<class>/*.{jpg,jpeg,png,bmp,gif}``; class ids by sorted class-folder name."""

  name = "folder"

  def _scan(self, name: str) -> tuple[list[str], list[str]]:
    split_dir = os.path.join(self.root, name)
    if not tf.io.gfile.isdir(split_dir):
      found = sorted(e.rstrip("/") for e in tf.io.gfile.listdir(self.root)) if tf.io.gfile.isdir(self.root) else []
      raise ValueError(f"No folder {split_dir!r} for split {name!r} (found in {self.root!r}: {found}).")
    entries = sorted(e.rstrip("/") for e in tf.io.gfile.listdir(split_dir))
    class_dirs = [e for e in entries if not e.startswith(".") and tf.io.gfile.isdir(os.path.join(split_dir, e))]
    loose = [e for e in entries if _is_image(e)]
    if loose:
      raise ValueError(
        f"{split_dir!r} holds images directly ({loose[0]!r}, ...); put them in one subfolder per "
        f"class: {split_dir}/<class>/<image>."
      )
    if not class_dirs:
      raise ValueError(f"Split {name!r} has no images: {split_dir!r} has no class subfolders.")
    paths, labels = [], []
    for class_name in class_dirs:
      class_dir = os.path.join(split_dir, class_name)
      images = sorted(e for e in tf.io.gfile.listdir(class_dir) if _is_image(e))
      if not images:
        raise ValueError(
          f"Class folder {class_dir!r} has no images ({', '.join(IMAGE_EXTENSIONS)}; subfolders "
          f"are not searched). Remove it or add its images."
        )
      paths += [os.path.join(class_dir, image) for image in images]
      labels += [class_name] * len(images)
    return paths, labels


class CsvFolderSource(_FolderSourceBase):
  """Multi-label images: ``root/<split>.csv`` rows ``filename,label1;label2;...`` (an optional header row
  ``filename,labels``), filenames relative to ``root/<split>/``. Classes are the sorted labels of the training
  split's CSV; a row with no labels is an image with no positive class."""

  name = "multilabel_folder"
  multilabel = True

  def _scan(self, name: str) -> tuple[list[str], list[tuple[str, ...]]]:
    csv_path, image_dir = os.path.join(self.root, f"{name}.csv"), os.path.join(self.root, name)
    if not tf.io.gfile.exists(csv_path):
      raise ValueError(f"Multi-label split {name!r} needs {csv_path!r} with rows 'filename,label1;label2'.")
    available = set()
    for directory, _, filenames in tf.io.gfile.walk(image_dir):
      available |= {os.path.relpath(os.path.join(directory, f), image_dir) for f in filenames}
    rows = []
    with tf.io.gfile.GFile(csv_path) as f:
      for line, row in enumerate(csv.reader(f), start=1):
        if not row or not "".join(row).strip():
          continue
        if line == 1 and row[0].strip().lower() == "filename":
          continue
        if len(row) != 2:
          raise ValueError(f"{csv_path}, line {line}: expected 'filename,label1;label2', got {row}.")
        filename = row[0].strip()
        if filename not in available:
          raise ValueError(f"{csv_path}, line {line}: {filename!r} is not a file in {image_dir!r}.")
        rows.append((line, filename, tuple(sorted({t.strip() for t in row[1].split(";") if t.strip()}))))
    if not rows:
      raise ValueError(f"Split {name!r} has no images: {csv_path!r} has no rows.")
    seen = {}
    for line, filename, _ in rows:
      if filename in seen:
        raise ValueError(f"{csv_path}, line {line}: {filename!r} already appears on line {seen[filename]}.")
      seen[filename] = line
    return [os.path.join(image_dir, filename) for _, filename, _ in rows], [tags for _, _, tags in rows]
