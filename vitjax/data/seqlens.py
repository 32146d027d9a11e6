"""Sequence lengths of NaFlex inputs: one data config, several lengths, one compiled step per length.

`config.data.seq_lens` lists the maximum numbers of patches (e.g. (64, 144, 256)); the preprocessing specs then
write the length as `{seq_len}`, which is filled in per length:

    pp_train = "resize_to_seq({seq_len}, 16)|flip_lr|value_range(-1, 1)|patchify(16, {seq_len})"

Training cycles through the lengths batch by batch (batch `b` at `seq_lens[b % len(seq_lens)]`), so the stream stays
a pure function of its position and a resumed run sees the very batches an uninterrupted one would; every batch has
one static shape, and a jitted step compiles once per length. Evaluation runs at one length: an evaluator's
`seq_len`, by default the longest.
"""

import functools
from collections.abc import Callable

import ml_collections
import tensorflow as tf

from vitjax.data import preprocess
from vitjax.errors import ConfigError

PLACEHOLDER = "{seq_len}"
SPECS = ("pp_train", "pp_eval")


def lengths(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """`config.seq_lens`; () for the configs of runs saved before the key existed."""
  return tuple(config.get("seq_lens") or ())


def check(config: ml_collections.ConfigDict) -> None:
  """A ConfigError unless `seq_lens` and the `{seq_len}` placeholders of the specs come together."""
  found = lengths(config)
  if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in found):
    raise ConfigError(f"config.data.seq_lens={found!r} must be positive whole numbers of patches, e.g. (64, 144).")
  templated = [key for key in SPECS if PLACEHOLDER in config.get(key, "")]
  if found and len(templated) < len(SPECS):
    missing = next(key for key in SPECS if key not in templated)
    raise ConfigError(
      f"config.data.seq_lens={found} needs {PLACEHOLDER} in config.data.{missing} (e.g. "
      f"'resize_to_seq({PLACEHOLDER}, 16)|value_range(-1, 1)|patchify(16, {PLACEHOLDER})'), or set seq_lens=()."
    )
  if templated and not found:
    raise ConfigError(f"config.data.{templated[0]} has {PLACEHOLDER}: list the lengths in config.data.seq_lens.")


def default_seq_len(config: ml_collections.ConfigDict) -> int | None:
  """The length evaluation and serving use unless told otherwise: the longest; None without lengths."""
  return max(lengths(config), default=None)


def at_seq_len(config: ml_collections.ConfigDict, seq_len: int | None = None) -> ml_collections.ConfigDict:
  """The data config with its specs at `seq_len` (None: `default_seq_len`) and no lengths left to choose: a config that
  every single-length reader takes. Without `seq_lens` the config itself (a `seq_len` is then an error)."""
  check(config)
  if not lengths(config):
    if seq_len is not None:
      raise ConfigError(f"A sequence length ({seq_len}) was given, but config.data.seq_lens is empty: not NaFlex.")
    return config
  seq_len = seq_len or default_seq_len(config)
  if seq_len < 1:
    raise ConfigError(f"The sequence length must be a positive number of patches, got {seq_len}.")
  view = config.copy_and_resolve_references()
  for key in SPECS:
    view[key] = config[key].replace(PLACEHOLDER, str(seq_len))
  view.seq_lens = ()
  return view


def train_preprocessing(config: ml_collections.ConfigDict) -> Callable[[dict, tf.Tensor, tf.Tensor], dict]:
  """`fn(features, seed, batch_index)`: `pp_train`, at the length of the example's batch when there are several."""
  if not lengths(config):
    op = preprocess.parse(config.pp_train)
    return lambda features, seed, batch_index: op(features, seed)
  ops = [preprocess.parse(at_seq_len(config, n).pp_train) for n in lengths(config)]

  def fn(features, seed, batch_index):
    branches = [functools.partial(op, dict(features), seed) for op in ops]
    return tf.switch_case(tf.cast(batch_index % len(ops), tf.int32), branches)

  return fn


def fit_fills(
  examples: tf.data.Dataset, config: ml_collections.ConfigDict, *, first: int, batch_size: int
) -> tf.data.Dataset:
  """The training examples from index `first` on, each cut or padded (with padding patches) to its batch's length.

  Only the slots of skipped records change (`failures.guard`): they hold a copy of the next good record, which was
  preprocessed for its own batch, at another length when the skipped record ended a batch."""
  found = lengths(config)
  if len(found) < 2:
    return examples
  sizes = tf.constant(found, tf.int32)

  def fit(index, example):
    size = sizes[tf.cast(index // batch_size, tf.int32) % len(found)]
    image = example["image"][:size]
    return {**example, "image": tf.pad(image, [[0, size - tf.shape(image)[0]], [0, 0]])}

  return tf.data.Dataset.zip(tf.data.Dataset.counter(first), examples).map(fit, num_parallel_calls=tf.data.AUTOTUNE)
