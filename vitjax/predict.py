"""Command-line prediction: ``python -m vitjax.predict --workdir=RUN --input=PATH --output=predictions.csv``.

PATH is an image file, a folder (searched recursively) or a glob. Every file gets a CSV row; files that cannot be
read get an empty label and the reason in `error`, and the run goes on.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's C++ start-up chatter off the console.

from vitjax import use_xla_cpu_emitters  # noqa: E402

use_xla_cpu_emitters()  # Before JAX starts its CPU backend.

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training run's directory (or an .npz file, with --model and --class_names).")
flags.DEFINE_string("input", None, "An image file, a folder (searched recursively) or a glob ('photos/**/*.jpg').")
flags.DEFINE_string("output", "predictions.csv", "The CSV file to write.")
flags.DEFINE_integer("top_k", 5, "How many (label, probability) pairs each row lists.")
flags.DEFINE_integer("batch_size", 32, "Images per model call.")
flags.DEFINE_integer("step", None, "The checkpoint step to use (default: the newest).")
flags.DEFINE_bool("ema", None, "Use the moving average of the parameters (default: when the run kept one).")
flags.DEFINE_string("model", None, "hf-hub:ORG/NAME (a Hub model, no workdir); for an .npz file: the model name.")
flags.DEFINE_list("class_names", None, "For an .npz file: the class names, in label order.")
flags.DEFINE_integer("seq_len", None, "NaFlex runs: patches per image (default: the longest the run trained at).")
flags.mark_flags_as_required(["input"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # The libraries' INFO lines say nothing a user of this command needs.
  from_hub = (FLAGS.model or "").startswith("hf-hub:")
  if from_hub == bool(FLAGS.workdir):
    sys.exit("error: Give either --workdir (a run, or an .npz file with --model) or --model=hf-hub:ORG/NAME.")
  if not from_hub and not os.path.exists(FLAGS.workdir):  # Before the imports below, which take seconds.
    sys.exit(f"error: No run workdir or checkpoint file at {FLAGS.workdir!r}.")
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")  # Host preprocessing only: leave accelerator memory to JAX.
  from vitjax import console
  from vitjax.deploy import predictions
  from vitjax.deploy.classifier import Classifier
  from vitjax.deploy.inputs import UnreadableFileError, find_files
  from vitjax.errors import ConfigError

  console.quiet_library_noise()
  try:
    paths = find_files(FLAGS.input)
    classifier = Classifier.load(
      FLAGS.model if from_hub else FLAGS.workdir,
      step=FLAGS.step,
      ema=FLAGS.ema,
      model=FLAGS.model,
      class_names=FLAGS.class_names,
      batch_size=FLAGS.batch_size,
      seq_len=FLAGS.seq_len,
    )
    summary = predictions.write_csv(classifier, paths, FLAGS.output, top_k=FLAGS.top_k)
  except (ConfigError, UnreadableFileError) as e:
    sys.exit(f"error: {e}")  # One line: these name the problem; anything else keeps its traceback.
  print(summary.line(FLAGS.output), flush=True)


if __name__ == "__main__":
  app.run(main)
