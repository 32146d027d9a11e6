"""Faults of checkpoints: a write that fails (a file size limit, as a full disk would) and a damaged newest
checkpoint. Each ends in one line or a warning naming the step, and the previous checkpoint is what a relaunch
restores."""

import resource
import signal

import jax
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
