"""Orbax checkpoints of the training state together with the input position and run bookkeeping."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


def create_manager(workdir: str, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """A manager over ``workdir/checkpoints`` whose items are the train ``state`` and a JSON ``meta`` record."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), "checkpoints"), options=options, item_names=("state", "meta")
  )


def save(manager: ocp.CheckpointManager, state: Any, *, step: int, meta: dict[str, Any]) -> None:
  """Saves ``state`` and ``meta`` (e.g. the number of input batches consumed) as checkpoint ``step``."""
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
  """Restores the newest readable checkpoint into the structure and shardings of ``abstract_state``.

  A newest checkpoint that cannot be read (say, cut short by a crash) is skipped with a warning and the one
  before it is used, so a preempted run always resumes from its last good state. Returns None if there is none.
  """
  for step in sorted(manager.all_steps(read=True), reverse=True):
    try:
      restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
      )
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped the same way.
      logging.warning(
        "Checkpoint at step %d cannot be restored (%s: %s); trying an older one.", step, type(e).__name__, e
      )
      continue
    return restored.state, restored.meta
  return None


def abstract(tree: Any) -> Any:
  """Shape, dtype and sharding of every array in ``tree``, as restore targets."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


from vitjax.pretrained import load_pretrained  # noqa: E402,F401 - public checkpoint import, re-exported here.
