"""Folder sources: images in one subfolder per class, or images with a CSV of labels (multi-label).

Files are ordered by a hash of their relative path, so split slices are random subsets that stay stable when files
are added. Loading adds ``_skipped`` (how many unreadable files were passed over to fill this slot) and
``_skipped_file`` (the first of them): a corrupt or truncated file is replaced by the next readable one of the
share, so every position of the stream still holds one example and resume stays exact. The pipeline masks such
slots out of evaluation and the host logs them (``pipeline.as_numpy``).
"""

import abc
import csv
import dataclasses
import hashlib
import os
import types
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vitjax.data.source import UNREADABLE, Share, Source, even_bounds, resolve_classes, split_names
from vitjax.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Consecutive unreadable files a training slot may pass over before the pipeline gives up.
MAX_FALLBACKS = 16


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
      raise ConfigError(f"config.data.folder must name the root folder of the {self.name!r} dataset.")
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
      raise ConfigError(
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
      raise ConfigError(f"config.data.folder={self.root!r} is not a folder.")
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
      raise ConfigError(f"Bad split {split!r} for {self.root!r}: {e}") from None
    paths, labels = [], []
    for instruction in instructions:
      files = ordered[instruction.splitname]
      paths += files.paths[instruction.from_ : instruction.to]
      labels += files.labels[instruction.from_ : instruction.to]
    if not paths:
      raise ConfigError(f"Split {split!r} of {self.root!r} selects no images.")
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
      raise ConfigError(f"No folder {split_dir!r} for split {name!r} (found in {self.root!r}: {found}).")
    entries = sorted(e.rstrip("/") for e in tf.io.gfile.listdir(split_dir))
    class_dirs = [e for e in entries if not e.startswith(".") and tf.io.gfile.isdir(os.path.join(split_dir, e))]
    loose = [e for e in entries if _is_image(e)]
    if loose:
      raise ConfigError(
        f"{split_dir!r} holds images directly ({loose[0]!r}, ...); put them in one subfolder per "
        f"class: {split_dir}/<class>/<image>."
      )
    if not class_dirs:
      raise ConfigError(f"Split {name!r} has no images: {split_dir!r} has no class subfolders.")
    paths, labels = [], []
    for class_name in class_dirs:
      class_dir = os.path.join(split_dir, class_name)
      images = sorted(e for e in tf.io.gfile.listdir(class_dir) if _is_image(e))
      if not images:
        raise ConfigError(
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
      raise ConfigError(f"Multi-label split {name!r} needs {csv_path!r} with rows 'filename,label1;label2'.")
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
          raise ConfigError(f"{csv_path}, line {line}: expected 'filename,label1;label2', got {row}.")
        filename = row[0].strip()
        if filename not in available:
          raise ConfigError(f"{csv_path}, line {line}: {filename!r} is not a file in {image_dir!r}.")
        rows.append((line, filename, tuple(sorted({t.strip() for t in row[1].split(";") if t.strip()}))))
    if not rows:
      raise ConfigError(f"Split {name!r} has no images: {csv_path!r} has no rows.")
    seen = {}
    for line, filename, _ in rows:
      if filename in seen:
        raise ConfigError(f"{csv_path}, line {line}: {filename!r} already appears on line {seen[filename]}.")
      seen[filename] = line
    return [os.path.join(image_dir, filename) for _, filename, _ in rows], [tags for _, _, tags in rows]
