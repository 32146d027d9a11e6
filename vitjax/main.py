"""Command-line entry point: ``python -m vitjax.main --config=configs/quickstart.py --workdir=/tmp/run``."""

import logging as std_logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # Keep TensorFlow's C++ start-up chatter off the console.

from vitjax import use_xla_cpu_emitters  # noqa: E402

use_xla_cpu_emitters()  # Before JAX starts its CPU backend.

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", None, "Config file, optionally with an argument: configs/vit_b16.py:cifar10.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and results; re-running resumes.")
flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "eval", "baseline", "robustness", "explain"],
  "train (and evaluate), evaluate the latest checkpoint, fit and compare the classical baselines, or measure the "
  "latest checkpoint's robustness (attacks, corruptions, label shift, uncertainty), or explain its predictions.",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs outside TPU/SLURM.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.mark_flags_as_required(["config", "workdir"])


def _launched_as_one_of_many() -> bool:
  """True under a multi-task SLURM step or on a multi-worker TPU VM slice, where jax can self-configure."""
  slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
  tpu_workers = len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(","))
  return slurm_tasks > 1 or tpu_workers > 1


def initialize_distributed() -> None:
  """Joins a multi-process run: from flags when given, else from the SLURM or TPU VM environment."""
  import jax

  if FLAGS.coordinator_address or FLAGS.num_processes:
    jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes, process_id=FLAGS.process_id
    )
  elif _launched_as_one_of_many():
    jax.distributed.initialize()


class _LibraryInfoFilter(std_logging.Filter):
  """Drops the per-operation INFO lines of Orbax and TFDS; their warnings and errors still show."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    chatty = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/")
    return record.levelno >= std_logging.WARNING or not any(part in record.pathname for part in chatty)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_LibraryInfoFilter())
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")  # tf.data only: leave accelerator memory to JAX.
  initialize_distributed()
  import jax

  from vitjax import classical, data
  from vitjax.evaluate import report
  from vitjax.explain import run_explain
  from vitjax.robustness.report import evaluate_robustness
  from vitjax.train import hooks, loop

  logging.info(
    "JAX process %d of %d, %d local / %d global devices (%s).",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )
  run = {"train": loop.train_and_evaluate, "eval": report.evaluate_checkpoint, "baseline": classical.run_baseline}
  run["robustness"] = evaluate_robustness
  run["explain"] = run_explain
  try:
    results = run[FLAGS.mode](FLAGS.config, FLAGS.workdir)
  except (ValueError, data.DatasetUnavailableError, hooks.NonFiniteLossError) as e:
    sys.exit(f"error: {e}")  # One line, no traceback: these errors name the problem and the fix.
  if jax.process_index() == 0 and FLAGS.mode not in ("baseline", "explain"):  # These print their own table.
    print(
      f"Final {results['split']} accuracy: {100 * results['accuracy']:.2f}% on {results['num_examples']} "
      f"examples at step {results['step']} ({results['train_seconds']:.0f}s of training).",
      flush=True,
    )


if __name__ == "__main__":
  app.run(main)
