"""Records that cannot be read or preprocessed: skipped and counted (the default), or named in one line under
``config.data.strict``.

Undecodable image files of a folder source have their own fallback (``folders``); this module covers the rest: an
op that fails on an odd record after decoding (a crop larger than a small image, say), and a TFRecord shard cut short
(``ignore_reads``: TensorFlow's reader then moves on to the next file, so the rest of that shard is skipped).

``guard`` maps a stream of ``(key, features)`` pairs whose keys count up by one. A record that fails leaves a gap in
the keys of what comes out; the gap's slots are filled with copies of the next record that succeeded, marked
``_skipped`` = 1 and ``_skipped_record`` = its key (``mask`` = 0 in evaluation), so every position of the stream still
holds one example, batches keep their boundaries and a resumed run reads the very batches an uninterrupted one did
(unless a shard cut short made its epochs shorter). Records are tried in windows of ``WINDOW``, each led by a marker
that always comes out: a stream whose every record fails ends with an error after ``MAX_IN_A_ROW`` of them instead of
searching forever. The host counts and logs the skipped slots (``pipeline.as_numpy``).
"""

from collections.abc import Callable

import tensorflow as tf

# Starts the message of the error that names a failed record, so that the host can tell it from other errors.
FAILED_RECORD = "Failed record"
WINDOW = 16
MAX_IN_A_ROW = 16  # As many as a folder source passes over (folders.MAX_FALLBACKS).
SKIP_KEYS = ("_skipped", "_skipped_file", "_skipped_record")


def ignore_reads(pairs: tf.data.Dataset, *, strict: bool) -> tf.data.Dataset:
  """``(key, record)`` pairs without those whose reading failed (their keys are left out), unless ``strict``."""
  return pairs if strict else pairs.ignore_errors(log_warning=True)


def guard(
  pairs: tf.data.Dataset, process: Callable, *, strict: bool, first_key: int = 0, limit: int = MAX_IN_A_ROW
) -> tf.data.Dataset:
  """``process(key, features)`` over ``pairs`` in order, one output per key from ``first_key`` on; a record that
  fails is skipped and filled (see the module doc), or ends the stream with an error naming it when ``strict``."""

  def keyed(key, features):
    out = process(key, features)
    out["_skipped"] = tf.cast(out.get("_skipped", 0), tf.int64)
    out["_skipped_file"] = out.get("_skipped_file", tf.constant(""))
    out["_skipped_record"] = tf.constant(-1, tf.int64)
    return key, tf.constant(False), out

  def window(keys, features):
    first = keys.take(1).get_single_element()
    done = tf.data.Dataset.zip(keys, features).map(keyed).ignore_errors(log_warning=strict)
    blank = {k: tf.zeros([d or 0 for d in s.shape], s.dtype) for k, s in done.element_spec[2].items()}
    marker = tf.data.Dataset.from_tensors((first, tf.constant(True), blank))
    return marker.concatenate(done)

  tried = pairs.window(WINDOW).interleave(
    window,
    cycle_length=tf.data.AUTOTUNE,
    block_length=WINDOW + 1,  # A whole window before the next: the order of the keys.
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  counted = tried.scan(tf.constant(first_key - 1, tf.int64), lambda last, item: _count(last, item, strict, limit))
  return counted.filter(lambda is_marker, missed, key, out: not is_marker).map(_fill).unbatch()


def _count(last: tf.Tensor, item, strict: bool, limit: int):
  """Scan step: the keys missed since the last record that came out (`last`), checked against the limit."""
  key, is_marker, out = item
  missed = key - 1 - last
  if strict:
    check = tf.debugging.Assert(
      missed == 0,
      [
        tf.strings.format(
          FAILED_RECORD + " (config.data.strict=True): record {} of this process's stream could not "
          "be read or preprocessed; config.data.strict=False skips it",
          last + 1,
        )
      ],
    )
  else:
    check = tf.debugging.Assert(
      missed < limit,
      [
        tf.strings.format(
          FAILED_RECORD + ": {} records in a row of this process's stream, from record {}, could not "
          "be read or preprocessed",
          (missed, last + 1),
        )
      ],
    )
  with tf.control_dependencies([check]):
    return tf.where(is_marker, last, key), (is_marker, tf.identity(missed), key, out)


def _fill(is_marker, missed, key, out):
  """The record, after as many copies of it as records were missed before it, each marked skipped."""
  del is_marker
  copies = tf.range(key - missed, key + 1)
  filled = copies < key
  tiled = tf.nest.map_structure(lambda t: tf.repeat(t[None], missed + 1, axis=0), out)
  tiled["_skipped"] = tf.where(filled, tf.constant(1, tf.int64), tiled["_skipped"])
  tiled["_skipped_file"] = tf.where(filled, "", tiled["_skipped_file"])
  tiled["_skipped_record"] = tf.where(filled, copies, -1)
  if "mask" in tiled:
    tiled["mask"] = tf.where(filled, tf.zeros_like(tiled["mask"]), tiled["mask"])
  return tiled
