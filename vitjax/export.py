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
flags.DEFINE_string("model", None, "hf-hub:ORG/NAME: export a Hub model in timm's format instead of a run.")
flags.DEFINE_string("format", None, "saved_model, tflite, onnx, or timm (a timm Hub repo folder).")
flags.DEFINE_string("push_to", None, "timm: also upload the folder to this Hub repo (ORG/NAME).")
flags.DEFINE_string("output", None, "The file (a folder for saved_model) to write; a sidecar OUTPUT.json goes beside.")
flags.DEFINE_string("quantize", "none", "none; tflite: float16 or int8; onnx: int8.")
flags.DEFINE_integer("step", None, "The checkpoint step to export (default: the newest).")
flags.DEFINE_bool("ema", None, "Export the moving average of the parameters (default: when the run kept one).")
flags.DEFINE_integer("image_size", None, "The input size, needed only when pp_eval has no resize or crop.")
flags.DEFINE_integer("seq_len", None, "NaFlex runs: the patches per image the exported model takes (default: longest).")
flags.DEFINE_integer(
  "batch_size", None, "Fix the exported model's batch size (default: any); batch 1 serves one image fastest."
)
flags.DEFINE_integer("calibration_images", 300, "int8: training images that calibrate the activation ranges.")
flags.mark_flags_as_required(["format", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # The libraries' INFO lines say nothing a user of this command needs.
  from vitjax import console
  from vitjax.deploy import formats
  from vitjax.errors import ConfigError

  console.quiet_library_noise()
  try:  # Before the imports below, which take seconds.
    if FLAGS.format != "timm":
      formats.check(FLAGS.format, FLAGS.quantize)
  except ConfigError as e:
    sys.exit(f"error: {e}")
  source = FLAGS.model if (FLAGS.model or "").startswith("hf-hub:") else FLAGS.workdir
  if not source or bool(FLAGS.workdir) == bool(FLAGS.model):
    sys.exit("error: Give either --workdir=RUN or --model=hf-hub:ORG/NAME.")
  if not FLAGS.model and not os.path.exists(FLAGS.workdir):
    sys.exit(f"error: No run workdir or checkpoint file at {FLAGS.workdir!r}.")
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")  # Conversion runs on the CPU: leave accelerator memory to JAX.
  from vitjax import data
  from vitjax.deploy import exporters
  from vitjax.deploy.classifier import Classifier
  from vitjax.deploy.inputs import UnreadableFileError

  try:
    classifier = Classifier.load(source, step=FLAGS.step, ema=FLAGS.ema, seq_len=FLAGS.seq_len)
    if FLAGS.format == "timm":
      return _publish(classifier, source)
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
      batch_size=FLAGS.batch_size,
    )
  except (ConfigError, UnreadableFileError, data.DatasetUnavailableError) as e:
    sys.exit(f"error: {e}")  # One line: these name the problem and the fix; anything else keeps its traceback.
  print(f"Wrote {FLAGS.output} ({FLAGS.format}, quantize={FLAGS.quantize}) and {FLAGS.output}.json", flush=True)


def _publish(classifier, source: str) -> None:
  """`--format=timm`: the timm repo folder, and its upload with `--push_to`."""
  from vitjax.transfer import publish

  config = publish.write_classifier(classifier, FLAGS.output, source=source)
  print(f"Wrote {FLAGS.output} (timm {config['architecture']}, {config['num_classes']} classes)", flush=True)
  if FLAGS.push_to:
    print(f"Pushed to {publish.push(FLAGS.output, FLAGS.push_to)}", flush=True)


if __name__ == "__main__":
  app.run(main)
