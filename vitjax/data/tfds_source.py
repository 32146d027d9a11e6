"""TFDS datasets as sources, and preparing them: fast failure when a dataset is neither on disk nor downloadable.

TFDS's downloader retries a connection that fails (10 retries with exponential backoff, about 3.5 minutes for an
unresolvable host) and offers no option to change that. Before downloading, ``TfdsSource.prepare`` therefore asks
each host the dataset downloads from for one answer, once and with a short deadline; only when every host
answers does TFDS download, so an offline machine gets the actionable message in seconds.
"""

import os
import threading
import time
import urllib.parse
from collections.abc import Sequence

import numpy as np
import requests
import tensorflow as tf
import tensorflow_datasets as tfds

from vitjax.data.source import DatasetUnavailableError, Share, Source, resolve_classes
from vitjax.errors import ConfigError

# Seconds a download host has to answer one HEAD request, name lookup included.
PROBE_TIMEOUT_S = 10.0


def urls_to_download(builder: tfds.core.DatasetBuilder) -> list[str]:
  """The registered URLs that preparing ``builder`` would fetch; none when it can do without the network.

  Manual datasets read DIR/downloads/manual instead, a finished download (its ``.INFO`` file) in
  DIR/downloads/<name> may be reused, and a file placed in DIR/downloads/manual replaces its URL.
  """
  downloads = os.path.join(builder.data_dir_root, "downloads")
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS or tf.io.gfile.glob(os.path.join(downloads, builder.name, "*.INFO")):
    return []
  manual = os.path.join(downloads, "manual")
  return [
    url
    for url, info in (builder.url_infos or {}).items()
    if not (info.filename and tf.io.gfile.exists(os.path.join(manual, info.filename)))
  ]


def first_unreachable(urls: Sequence[str], *, timeout: float = PROBE_TIMEOUT_S) -> str | None:
  """Why a host of ``urls`` gives no HTTP answer to one HEAD request within ``timeout`` s; None if all answer.

  Any status counts as an answer (TFDS's download then reports the real outcome). Hosts are asked at once from
  daemon threads, so a hung name lookup, which no socket timeout bounds, cannot stretch the wait either.
  """
  first_url = {}
  for url in urls:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https"):
      first_url.setdefault(parts.netloc, url)
  failures: dict[str, str | None] = {}

  def ask(host: str, url: str) -> None:
    try:
      requests.head(url, timeout=timeout, allow_redirects=False).close()
      failures[host] = None
    except (requests.ConnectionError, requests.Timeout) as e:
      # The urllib3 error inside says what went wrong (name lookup, refused, TLS) without requests' wrapping.
      cause = getattr(e.args[0], "reason", e) if e.args else e
      failures[host] = f"{host} did not answer: {type(cause).__name__}: {cause}"

  threads = [threading.Thread(target=ask, args=item, daemon=True) for item in first_url.items()]
  for thread in threads:
    thread.start()
  deadline = time.monotonic() + timeout
  for thread in threads:
    thread.join(max(0.0, deadline - time.monotonic()))
  for host in first_url:
    failure = failures.get(host, f"{host} did not answer within {timeout:g} s")
    if failure:
      return failure
  return None


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
        raise ConfigError(
          f"config.data.{role}={key!r} is not a feature of {self.name!r}; its features are: {', '.join(features)}."
        )
    label = features[label_key]
    if isinstance(label, tfds.features.ClassLabel):
      all_names = label.names
    elif isinstance(label, tfds.features.Sequence) and isinstance(label.feature, tfds.features.ClassLabel):
      self.multilabel, all_names = True, label.feature.names
    else:
      raise ConfigError(
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
    failure = first_unreachable(urls_to_download(self.builder))
    if failure is None:
      try:
        self.builder.download_and_prepare()
        return
      except Exception as e:  # noqa: BLE001 - any download failure gets the same actionable message.
        failure = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    raise DatasetUnavailableError(
      f"Dataset {self.name!r} is not prepared in {os.fspath(self.builder.data_dir_root)!r} and could not be downloaded "
      f"({failure}). On a machine with internet access run `tfds build {self.name} --data_dir=DIR` (manual "
      f"datasets such as imagenet2012 need their archives in DIR/downloads/manual), then copy DIR here and pass "
      f"--config.data.data_dir=DIR."
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

  def files(self, split: str, *, index: int = 0, count: int = 1, drop_remainder: bool = False) -> list[str]:
    instructions = self.builder.info.splits[self._split(split, index, count, drop_remainder)].file_instructions
    return [os.fspath(instruction.filename) for instruction in instructions]

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
