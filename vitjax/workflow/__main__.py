"""``python -m vitjax.workflow --images=DIR --workdir=W``: from a folder of images to a tuned, deployed model.

Options: ``--budget=30m``, ``--pretrained=hf-hub:ORG/NAME``, ``--storage=URL`` (one Optuna study for workers on
several machines), ``--config=configs/workflow.py:runlocal`` (the package's own config by default).

Rerunning the same command continues where it stopped: finished stages are skipped, finished Optuna trials kept.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's C++ start-up chatter off the console.

from vitjax import use_xla_cpu_emitters  # noqa: E402

use_xla_cpu_emitters()  # Before JAX starts its CPU backend.

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vitjax import configs  # noqa: E402

# The package's own file (configs/workflow.py in a checkout uses it): the default works from any directory.
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(configs.__file__)), "workflow.py")

FLAGS = flags.FLAGS
flags.DEFINE_string("images", None, "A folder of class subfolders (or with train/val/test subfolders of classes).")
flags.DEFINE_string("workdir", None, "Where the split, every run, the study, the state file and the report go.")
flags.DEFINE_string("budget", None, "Wall time of the whole workflow, e.g. 30m or 2h (default: config.budget).")
flags.DEFINE_string("pretrained", None, "Weights for the pretrained candidate: hf-hub:NAME, an .npz, a .safetensors.")
flags.DEFINE_string(
  "storage",
  None,
  "An RDB URL for the Optuna study, shared by workers on several machines (default: SQLite in the workdir).",
)
config_flags.DEFINE_config_file(
  "config",
  DEFAULT_CONFIG,
  "The workflow config (default: the package's own), e.g. configs/workflow.py:runlocal.",
  lock_config=True,
)
flags.mark_flags_as_required(["images", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")  # The input pipeline and exporters run on the CPU.
  from vitjax import console
  from vitjax.errors import ConfigError
  from vitjax.workflow import pipeline, runs

  console.quiet_library_noise()
  workflow = FLAGS.config
  if FLAGS.budget:
    workflow.budget = FLAGS.budget
  try:
    summary = pipeline.run(
      workflow, FLAGS.images, FLAGS.workdir, storage=FLAGS.storage or "", pretrained=FLAGS.pretrained
    )
  except ConfigError as e:
    sys.exit(f"error: {e}")  # One line: a mistake in the command or config; anything else keeps its traceback.
  except runs.Preempted as e:
    sys.exit(str(e))
  print(f"Report: {os.path.join(FLAGS.workdir, 'report.html')}; deployed run: {summary['deployed']['workdir']}")


if __name__ == "__main__":
  app.run(main)
