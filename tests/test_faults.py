"""Faults of checkpoints: a write that fails (a file size limit, as a full disk would) and a damaged newest
checkpoint. Each ends in one line or a warning naming the step, and the previous checkpoint is what a relaunch
restores."""

import json
import logging
import os
import resource
import signal

import jax
import ml_collections
import numpy as np
import pytest

from vitjax import checkpoints
from vitjax.data import source as data_source


def _state(seed: int):
  rng = np.random.default_rng(seed)
  return {"params": {"kernel": rng.standard_normal((512, 512)).astype(np.float32)}, "step": np.int32(seed)}


def _abstract():
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), _state(0))


@pytest.fixture
def file_size_limit():
  """Sets RLIMIT_FSIZE on request, restored afterwards; a write past it fails with EFBIG (as ENOSPC on a full
  disk would) instead of killing the process."""
  signals = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  limits = resource.getrlimit(resource.RLIMIT_FSIZE)
  yield lambda size: resource.setrlimit(resource.RLIMIT_FSIZE, (size, limits[1]))
  resource.setrlimit(resource.RLIMIT_FSIZE, limits)
  signal.signal(signal.SIGXFSZ, signals)


def test_failed_checkpoint_write_is_one_error_and_the_previous_checkpoint_is_restored(tmp_path, file_size_limit):
  manager = checkpoints.create_manager(str(tmp_path))
  checkpoints.save(manager, _state(2), step=2, meta={"step": 2})
  checkpoints.wait(manager)
  file_size_limit(64 * 1024)  # The state's array file is 1 MB.
  with pytest.raises(checkpoints.CheckpointWriteError) as raised:
    checkpoints.save(manager, _state(4), step=4, meta={"step": 4})
    checkpoints.wait(manager)
  file_size_limit(resource.RLIM_INFINITY)
  message = str(raised.value)
  assert "\n" not in message and "File too large: " in message and "last complete checkpoint is step 2" in message
  relaunched = checkpoints.create_manager(str(tmp_path))
  assert relaunched.all_steps(read=True) == [2]  # The partial step-4 folder is not taken for a checkpoint.
  state, meta = checkpoints.restore_latest(relaunched, _abstract())
  assert meta["step"] == 2 and np.array_equal(state["params"]["kernel"], _state(2)["params"]["kernel"])


def test_other_save_errors_keep_their_type_and_traceback(tmp_path):
  manager = checkpoints.create_manager(str(tmp_path))
  with pytest.raises(Exception) as raised:
    checkpoints.save(manager, {"x": object()}, step=1, meta={})
    checkpoints.wait(manager)
  assert not isinstance(raised.value, checkpoints.CheckpointWriteError)


def _damage(folder, how: str) -> None:
  if how == "metadata":  # Orbax's record of the tree's structure, overwritten with a fragment.
    with open(os.path.join(folder, "_METADATA"), "w") as f:
      f.write('{"tree_metadata": {')
    return
  for root, _, files in os.walk(folder):  # Every file cut short, as by an interrupted copy.
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(os.path.getsize(f.name) // 3)


@pytest.mark.parametrize("how", ["truncated", "metadata"])
def test_damaged_newest_checkpoint_is_skipped_with_a_warning_naming_it(tmp_path, caplog, how):
  workdir = str(tmp_path)
  manager = checkpoints.create_manager(workdir)
  for step in (2, 4):
    checkpoints.save(manager, _state(step), step=step, meta={"step": step})
  checkpoints.wait(manager)
  checkpoints.write_run_info(workdir, ml_collections.ConfigDict({"name": "faults"}), ["a", "b"])
  _damage(os.path.join(workdir, "checkpoints", "4", "state"), how)
  with caplog.at_level(logging.WARNING):
    state, meta = checkpoints.restore_latest(checkpoints.create_manager(workdir), _abstract())
    run = checkpoints.load_run(workdir)  # What predict, eval, export and explain read.
  assert meta["step"] == 2 and np.array_equal(state["params"]["kernel"], _state(2)["params"]["kernel"])
  assert run.meta["step"] == 2 and np.array_equal(run.params["kernel"], _state(2)["params"]["kernel"])
  assert "Checkpoint at step 4 cannot be restored" in caplog.text
  assert f"Checkpoint {os.path.join(workdir, 'checkpoints', '4')} cannot be read" in caplog.text
  with pytest.raises((ValueError, json.JSONDecodeError)):  # An explicit step is read or fails: no substitute.
    checkpoints.load_run(workdir, step=4)


@pytest.fixture
def folder_with_a_broken_file(tmp_path):
  """A folder dataset of two classes, 4 images each, one of them not an image at all."""
  from PIL import Image

  rng = np.random.default_rng(0)
  for label in ("cat", "dog"):
    (tmp_path / "train" / label).mkdir(parents=True)
    for i in range(4):
      Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "train" / label / f"{i}.png")
  (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not an image")
  return tmp_path


def _folder_stream(root, *, strict: bool, counts=None):
  from vitjax import data
  from vitjax.configs import common

  config = common.get_base_config().data
  config.update(dataset="folder", folder=str(root), pp_train="resize(8)", pp_eval="resize(8)", strict=strict)
  ds = data.train_dataset(data.from_config(config), config, batch_size=9, seed=0)
  return data.as_numpy(ds, where="process 1 of 2, host b", counts=counts)


def test_unreadable_file_is_counted_when_skipped_and_names_file_and_host_when_strict(folder_with_a_broken_file):
  from vitjax import data

  counts = {"skipped": 0}
  batch = next(_folder_stream(folder_with_a_broken_file, strict=False, counts=counts))
  assert batch["image"].shape[0] == 9 and counts["skipped"] == 1  # Replaced by the next readable file, counted.
  with pytest.raises(data.UnreadableImageError) as raised:
    next(_folder_stream(folder_with_a_broken_file, strict=True))
  message = str(raised.value)
  assert "\n" not in message and "train/cat/broken.jpg" in message and message.endswith("(on process 1 of 2, host b)")


def test_other_input_pipeline_failures_name_the_host_and_the_file(tmp_path):
  import tensorflow as tf

  from vitjax import data

  shard = tmp_path / "train.tfrecord-00000-of-00001"
  with tf.io.TFRecordWriter(str(shard)) as writer:
    for i in range(4):
      writer.write(tf.train.Example().SerializeToString() + bytes([i]) * 100)
  shard.write_bytes(shard.read_bytes()[:150])  # The shard cut short inside its second record.
  ds = tf.data.TFRecordDataset(str(shard)).map(lambda record: {"length": tf.strings.length(record)})
  with pytest.raises(data.InputPipelineError) as raised:
    list(data.as_numpy(ds, where="process 1 of 2, host b"))
  message = str(raised.value)
  assert "\n" not in message and message.startswith("The input pipeline failed on process 1 of 2, host b: ")
  assert message.endswith("DataLossError: truncated record at 116' failed with Read less bytes than requested")


class _Records(data_source.Source):
  """A source read from one TFRecord file of serialised (size, label) pairs: an image of `size` x `size` pixels."""

  name = "records"

  def __init__(self, path: str, count: int):
    self.path, self.count = path, count

  def class_names(self) -> list[str]:
    return ["a", "b"]

  def share_size(self, split, *, index, count, drop_remainder) -> int:
    return self.count

  def files(self, split, *, index=0, count=1, drop_remainder=False) -> list[str]:
    return [self.path]

  def share(self, split, *, index=0, count=1, drop_remainder=False, cache=False) -> data_source.Share:
    import tensorflow as tf

    def image(record):
      size, label = tf.unstack(tf.ensure_shape(tf.io.parse_tensor(record, tf.int64), [2]))
      return {"image": tf.fill(tf.stack([size, size, 3]), tf.constant(7, tf.uint8)), "label": label}

    records = tf.data.TFRecordDataset(self.path).map(image)
    return data_source.Share(records, self.count, lambda pairs, decode: pairs)


def _write_records(path, sizes) -> None:
  import tensorflow as tf

  with tf.io.TFRecordWriter(str(path)) as writer:
    for i, size in enumerate(sizes):
      writer.write(tf.io.serialize_tensor(tf.constant([size, i % 2], tf.int64)).numpy())


def _stream(source, *, strict: bool, pp: str = "random_crop(8)", counts=None, batch_size=4):
  from vitjax import data
  from vitjax.configs import common

  config = common.get_base_config().data
  config.update(pp_train=pp, pp_eval=pp, strict=strict, shuffle_buffer=1)
  ds = data.train_dataset(source, config, batch_size=batch_size, seed=0)
  return data.as_numpy(ds, where="process 1 of 2, host b", counts=counts, files=source.files("train"))


def test_a_record_whose_preprocessing_fails_is_skipped_and_counted_or_named_when_strict(tmp_path):
  from vitjax import data

  _write_records(tmp_path / "r.tfrecord", [8, 8, 8, 4, 8, 8, 8, 8])  # A 4x4 image cannot give an 8x8 crop.
  source = _Records(str(tmp_path / "r.tfrecord"), 8)
  counts = {}
  batches = _stream(source, strict=False, counts=counts)
  first = [next(batches) for _ in range(2)]  # Every slot filled: batches keep their size and their boundaries.
  assert [b["image"].shape for b in first] == [(4, 8, 8, 3)] * 2 and counts["skipped"] == 1
  assert sorted(first[0]) == ["image", "labels"]  # The skip's bookkeeping is the host's, not the model's.
  with pytest.raises(data.InputPipelineError) as raised:
    next(_stream(source, strict=True))
  message = str(raised.value)
  assert "\n" not in message and message.startswith("Failed record (config.data.strict=True): record ")
  assert message.endswith("config.data.strict=False skips it (on process 1 of 2, host b)")


def test_every_record_failing_ends_the_stream_instead_of_searching_forever(tmp_path):
  from vitjax import data

  _write_records(tmp_path / "r.tfrecord", [4] * 40)
  with pytest.raises(data.InputPipelineError, match="Failed record: 1[6-9] records in a row"):
    next(_stream(_Records(str(tmp_path / "r.tfrecord"), 40), strict=False))


def test_a_truncated_shard_is_named_when_strict_and_its_rest_skipped_and_counted_otherwise(tmp_path):
  from vitjax import data

  shard = tmp_path / "train.tfrecord-00000-of-00001"
  _write_records(shard, [8] * 12)
  shard.write_bytes(shard.read_bytes()[: len(shard.read_bytes()) * 2 // 3 + 20])  # Cut in its 9th record.
  source = _Records(str(shard), 12)
  with pytest.raises(data.InputPipelineError) as raised:
    next(_stream(source, strict=True, batch_size=12))
  message = str(raised.value)
  assert "\n" not in message and message.startswith(
    f"A data file could not be read on process 1 of 2, host b: file {shard} ("
  )
  assert "truncated record at" in message
  counts = {}
  batches = _stream(source, strict=False, counts=counts, batch_size=12)
  assert next(batches)["image"].shape == (12, 8, 8, 3) and counts["skipped"] == 1  # Records 9-12, as one.
