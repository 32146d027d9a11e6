"""One process of the multi-process equality test: a few jit data-parallel steps on a fixed global batch.

Each process feeds only its own rows of every global batch; the result must equal one process feeding all rows.
Run as: python tests/multihost_worker.py OUT.npz [--coordinator_address=... --num_processes=N --process_id=I]
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from vitjax import checkpoints, losses, models, sharding  # noqa: E402
from vitjax.configs import common  # noqa: E402
from vitjax.train import objectives, optim, steps  # noqa: E402
from vitjax.train.state import create_train_state  # noqa: E402

flags.DEFINE_string("coordinator_address", None, "")
flags.DEFINE_integer("num_processes", None, "")
flags.DEFINE_integer("process_id", None, "")
FLAGS = flags.FLAGS
GLOBAL_BATCH, NUM_STEPS = 16, 3


def truncate_files(folder: str) -> None:
  """Cuts every file under `folder` to a third of its size."""
  for root, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(os.path.getsize(f.name) // 3)


def main(argv):
  out = argv[1]
  if FLAGS.num_processes:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  model = models.build("vit_micro8", num_classes=10)
  config = common.get_base_config()
  config.optimizer.update(name="sgd", learning_rate=0.1, momentum=0.9, grad_clip_norm=0.0)
  config.schedule.name = "constant"
  tx, schedule = optim.from_config(config, total_steps=NUM_STEPS)
  init = functools.partial(create_train_state, model, tx, image_shape=(16, 16, 3))
  parallel = sharding.Jit(sharding.make_mesh(), jax.eval_shape(init, jax.random.key(0)))
  state = parallel.init(init, jax.random.key(0))
  step = parallel.train_step(
    steps.make_train_step(objective=objectives.supervised(losses.softmax_cross_entropy), learning_rate_fn=schedule)
  )
  rng = np.random.default_rng(0)
  rows = GLOBAL_BATCH // jax.process_count()
  mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
  for _ in range(NUM_STEPS):
    batch = {
      "image": rng.uniform(-1, 1, (GLOBAL_BATCH, 16, 16, 3)).astype(np.float32),
      "labels": np.eye(10, dtype=np.float32)[rng.integers(0, 10, GLOBAL_BATCH)],
    }
    state, _ = step(state, parallel.place_batch(jax.tree.map(lambda x: x[mine], batch)), jax.random.key(1))
  # A cooperative Orbax save, a newer checkpoint cut short (as by a copy) and a restore that falls back past it on
  # every process, then the parameters for comparison.
  manager = checkpoints.create_manager(os.path.dirname(out) + f"/ckpt_{jax.process_count()}", max_to_keep=2)
  for saved in (NUM_STEPS, NUM_STEPS + 1):
    checkpoints.save(manager, state, step=saved, meta={"step": saved})
  checkpoints.wait(manager)
  multihost_utils.sync_global_devices("saved")
  if jax.process_index() == 0:
    truncate_files(os.path.join(manager.directory, str(NUM_STEPS + 1), "state"))
  multihost_utils.sync_global_devices("truncated")
  restored, meta = checkpoints.restore_latest(manager, parallel.restore_target(jax.eval_shape(init, jax.random.key(0))))
  assert meta["step"] == NUM_STEPS, meta
  if jax.process_index() == 0:
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(restored.params))
    np.savez(out, **{jax.tree_util.keystr(path): leaf for path, leaf in leaves})


if __name__ == "__main__":
  app.run(main)
