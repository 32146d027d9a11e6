"""The Orbax layout of a run, known here only: save, restore with fallback, and reading a run back for any consumer.

A workdir holds `checkpoints/<step>/{state,meta}` (the train state and a JSON record with the input position and
run bookkeeping), `config.json` and `class_names.json`. `load_run(workdir)` gives evaluation, prediction, export
and explanation code everything they need without knowing this layout.
"""

import contextlib
import dataclasses
import json
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from vitjax.errors import ConfigError

CONFIG_FILE, CLASS_NAMES_FILE = "config.json", "class_names.json"


def create_manager(workdir: str, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """A manager over `workdir/checkpoints` whose items are the train `state` and a JSON `meta` record."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), "checkpoints"), options=options, item_names=("state", "meta")
  )


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (a full disk, a file size limit, no permission); the message names the
  reason, the file and the last complete checkpoint, which a relaunch resumes from."""


def save(manager: ocp.CheckpointManager, state: Any, *, step: int, meta: dict[str, Any]) -> None:
  """Saves `state` and `meta` (e.g. the number of input batches consumed) as checkpoint `step`, in the background.

  Orbax writes a step into a temporary folder and renames it once complete, so a failed write never passes for a
  checkpoint. A write that failed (this one, or an earlier one still in the background) raises CheckpointWriteError.
  """
  with _writing(manager):
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for the checkpoints being written; one that failed raises CheckpointWriteError."""
  with _writing(manager):
    manager.wait_until_finished()


@contextlib.contextmanager
def _writing(manager: ocp.CheckpointManager):
  """Turns a file-system error of Orbax's writers (Python's OSError, or TensorStore's errors that carry an
  os_error_code) into a CheckpointWriteError; anything else keeps its traceback."""
  try:
    yield
  except Exception as e:
    reason = _os_error(e)
    if reason is None:
      raise
    complete = manager.all_steps(read=True)
    last = f"step {max(complete)}" if complete else "none"
    raise CheckpointWriteError(
      f"A checkpoint could not be written ({reason}); the last complete checkpoint is {last}: make room (or fix "
      f"the folder) and relaunch to resume from it."
    ) from e


def _os_error(error: BaseException) -> str | None:
  """'strerror: file' of the file-system error in `error`'s chain, or None if there is none."""
  while error is not None:
    if isinstance(error, OSError) and error.errno:
      return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    code = re.search(r"os_error_code='?(\d+)", str(error))
    if code:
      file = re.search(r'local file "([^"]+)"', str(error))
      return os.strerror(int(code.group(1))) + (f": {file.group(1)}" if file else "")
    error = error.__cause__ or error.__context__
  return None


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
  """Restores the newest readable checkpoint into the structure and shardings of `abstract_state`.

  A newest checkpoint that cannot be read (cut short by a crash or a copy, its metadata damaged) is skipped with a
  warning naming it and the one before it is used, so a preempted run always resumes from its last good state.
  In a multi-process run every process uses the same step: one that fails on any process is skipped by all.
  Returns None if there is none.
  """
  for step in sorted(manager.all_steps(read=True), reverse=True):
    restored, error = None, None
    try:
      restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
      )
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped the same way.
      error = e
    if not _on_every_process(error is None):
      reason = f"{type(error).__name__}: {_first_line(error)}" if error else "another process could not read it"
      logging.warning("Checkpoint at step %d cannot be restored (%s); trying an older one.", step, reason)
      continue
    return restored.state, restored.meta
  return None


def _on_every_process(ok: bool) -> bool:
  """Whether `ok` holds on every process of the run (one collective when there are several)."""
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.process_allgather(np.array(ok)).all())


def write_run_info(workdir: str, config: ml_collections.ConfigDict, class_names: list[str]) -> None:
  """The config and the class names beside the checkpoints, so that a run can be read back without its code."""
  with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  with open(os.path.join(workdir, CLASS_NAMES_FILE), "w") as f:
    json.dump(class_names, f)


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run as its consumers need it: host numpy variables, the config it ran with, its class names."""

  config: ml_collections.ConfigDict
  params: Any
  batch_stats: Any
  ema_params: Any
  class_names: list[str]
  meta: dict[str, Any]

  def variables(self, *, ema: bool = False) -> dict[str, Any]:
    """`model.apply` variables: the parameters (or their moving average) and BatchNorm statistics if any."""
    params = self.ema_params if ema else self.params
    if params is None:
      raise ConfigError("This run kept no moving average of its parameters (config.ema_decay was 0).")
    return {"params": params, "batch_stats": self.batch_stats} if self.batch_stats else {"params": params}


def load_run(workdir: str, *, step: int | None = None) -> Run:
  """The run in `workdir` at checkpoint `step` (default: the newest), with its `config.json` and class names."""
  path = os.path.join(workdir, "checkpoints", str(step)) if step is not None else workdir
  tree, meta = read_orbax(path)
  for name in (CONFIG_FILE, CLASS_NAMES_FILE):
    if not os.path.exists(os.path.join(workdir, name)):
      raise ConfigError(f"{workdir!r} has no {name}: is it the workdir of a training run?")
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(os.path.join(workdir, CLASS_NAMES_FILE)) as f:
    class_names = json.load(f)
  return Run(
    config=config,
    params=tree["params"],
    batch_stats=tree.get("batch_stats") or {},
    ema_params=tree.get("ema_params"),
    class_names=class_names,
    meta=meta,
  )


def load_state(path: str, abstract_state: Any) -> Any:
  """The full train state (params, optimizer state, step) of another run at `path`, to continue training it.

  `abstract_state` (from `jax.eval_shape`, with shardings) gives the structure and where the arrays go.
  """
  item_dir, _ = _orbax_item(_step_folders(path)[0])
  return ocp.StandardCheckpointHandler().restore(epath.Path(item_dir), args=ocp.args.StandardRestore(abstract_state))


def read_orbax(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(tree as host numpy arrays, run metadata) of the newest readable Orbax checkpoint under `path`.

  `path` is a workdir, its `checkpoints` folder, one step folder (items `state` and `meta`) or a saved pytree.
  The metadata is the `meta` record saved with the state (e.g. `train_seconds`) plus `step`, or empty. In a
  workdir or checkpoints folder, a newest step that cannot be read (cut short, damaged metadata) is skipped with a
  warning naming it, and the one before it is read.
  """
  folders = _step_folders(path)
  for i, folder in enumerate(folders):
    try:
      item_dir, meta = _orbax_item(folder)
      handler = ocp.PyTreeCheckpointHandler()
      structure = handler.metadata(epath.Path(item_dir)).tree
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), structure)
      return handler.restore(epath.Path(item_dir), args=ocp.args.PyTreeRestore(restore_args=restore_args)), meta
    except Exception as e:  # noqa: BLE001 - any unreadable step is skipped the same way, but the oldest.
      if i == len(folders) - 1:
        raise
      logging.warning(
        "Checkpoint %s cannot be read (%s: %s); trying an older one.", folder, type(e).__name__, _first_line(e)
      )
  raise AssertionError("unreachable: _step_folders returns at least one folder")


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [""])[0][:300]


def _step_folders(path: str) -> list[str]:
  """The step folders under a workdir or checkpoints folder `path`, newest first; else `path` itself."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise ConfigError(f"No Orbax checkpoint folder at {path!r}.")
  if not os.path.isdir(os.path.join(path, "checkpoints")) and os.path.exists(os.path.join(path, CONFIG_FILE)):
    raise ConfigError(f"{path!r} holds no checkpoint yet: train first with --mode=train.")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  steps = [int(name) for name in os.listdir(path) if name.isdigit() and os.path.isdir(os.path.join(path, name))]
  return [os.path.join(path, str(step)) for step in sorted(steps, reverse=True)] or [path]


def _orbax_item(path: str) -> tuple[str, dict[str, Any]]:
  """The pytree folder to read in the step folder (or saved pytree) `path`, and the run metadata next to it."""
  if not os.path.isdir(os.path.join(path, "state")):
    if not os.path.exists(os.path.join(path, "_METADATA")):
      raise ConfigError(
        f"No checkpoint in {path!r}: expected a workdir with checkpoints, one step folder of "
        f"it, or a saved pytree (train first with --mode=train)."
      )
    return path, {}
  meta = {}
  meta_file = os.path.join(path, "meta", "metadata")
  if os.path.exists(meta_file):
    with open(meta_file) as f:
      meta = json.load(f)
  name = os.path.basename(path)
  return os.path.join(path, "state"), {**meta, **({"step": int(name)} if name.isdigit() else {})}
