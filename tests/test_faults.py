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
