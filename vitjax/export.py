"""Command-line export: ``python -m vitjax.export --workdir=RUN --format=tflite --output=model.tflite``.

Formats: saved_model, tflite, onnx; ``--quantize=none|float16|int8`` where the format offers it. The model takes a
uint8 batch [N, H, W, C] at its input size and returns class probabilities; ``OUTPUT.json`` describes it.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's C++ start-up chatter off the console.

from vitjax import use_xla_cpu_emitters  # noqa: E402

use_xla_cpu_emitters()  # Before JAX starts its CPU backend.

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training run's directory.")
flags.DEFINE_string("format", None, "saved_model, tflite or onnx.")
flags.DEFINE_string("output", None, "The file (a folder for saved_model) to write; a sidecar OUTPUT.json goes beside.")
flags.DEFINE_string("quantize", "none", "none; tflite: float16 or int8; onnx: int8.")
flags.DEFINE_integer("step", None, "The checkpoint step to export (default: the newest).")
flags.DEFINE_bool("ema", None, "Export the moving average of the parameters (default: when the run kept one).")
flags.DEFINE_integer("image_size", None, "The input size, needed only when pp_eval has no resize or crop.")
flags.DEFINE_integer("calibration_images", 300, "int8: training images that calibrate the activation ranges.")
flags.mark_flags_as_required(["workdir", "format", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # The libraries' INFO lines say nothing a user of this command needs.
  from vitjax.deploy import formats

  try:  # Before the imports below, which take seconds.
    formats.check(FLAGS.format, FLAGS.quantize)
  except ValueError as e:
    sys.exit(f"error: {e}")
  if not os.path.exists(FLAGS.workdir):
    sys.exit(f"error: No run workdir or checkpoint file at {FLAGS.workdir!r}.")
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")  # Conversion runs on the CPU: leave accelerator memory to JAX.
  from vitjax import data
  from vitjax.deploy import exporters
  from vitjax.deploy.classifier import Classifier

  try:
    classifier = Classifier.load(FLAGS.workdir, step=FLAGS.step, ema=FLAGS.ema)
    representative = None
    if FLAGS.quantize == "int8":
      representative = exporters.representative_images(
        classifier.config.data, classifier, count=FLAGS.calibration_images
      )
    exporters.export(
      classifier,
      FLAGS.output,
      format=FLAGS.format,
      quantize=FLAGS.quantize,
      representative=representative,
      image_size=FLAGS.image_size,
    )
  except (ValueError, data.DatasetUnavailableError) as e:
    sys.exit(f"error: {e}")  # One line, no traceback: these errors name the problem and the fix.
  print(f"Wrote {FLAGS.output} ({FLAGS.format}, quantize={FLAGS.quantize}) and {FLAGS.output}.json", flush=True)


if __name__ == "__main__":
  app.run(main)
