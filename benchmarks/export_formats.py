"""Exported formats side by side on this CPU: file size, batch-1 latency, batch-32 throughput, accuracy, agreement.

    python -m vitjax.main --config=configs/quickstart.py --workdir=/tmp/qs      # ~1 min on 2 cores
    python benchmarks/export_formats.py --workdir=/tmp/qs
    python benchmarks/export_formats.py --model=vit_s16 --image_size=224 --limit=64 --repeats=5

`--model` measures an untrained model of that name (random head, so that its classes differ) on the digits resized
to `--image_size`: sizes and speeds are real, accuracy is chance and "agree" only measures numerical fidelity.

Exports the run in every format and quantisation (vitjax.deploy.exporters), runs each in its own runtime (JAX,
TensorFlow, the TFLite interpreter with one thread per core, onnxruntime) on the host-preprocessed uint8 images of
the run's eval split, and prints one markdown row per export. "agree" is the share of images whose top-1 class
matches JAX's, "max |dp|" the largest difference from JAX's probabilities. Timings are medians of `--repeats`
calls after warm-up; the share of CPU time that other processes took meanwhile is printed with each row, since on a
shared machine it distorts every figure (see model_throughput.py).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vitjax import use_xla_cpu_emitters  # noqa: E402

use_xla_cpu_emitters()  # As the command-line entry points do; before the first JAX computation.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_share import cpu_ticks, other_share  # noqa: E402

from configs import quickstart  # noqa: E402
from vitjax import data, models  # noqa: E402
from vitjax.deploy import exporters  # noqa: E402
from vitjax.deploy.classifier import Classifier  # noqa: E402

EXPORTS = [
  ("saved_model", "none"),
  ("tflite", "none"),
  ("tflite", "float16"),
  ("tflite", "int8"),
  ("onnx", "none"),
  ("onnx", "int8"),
]


def eval_images(clf: Classifier) -> tuple[np.ndarray, np.ndarray]:
  """The run's eval split as the exported models take it (uint8, host ops of pp_eval applied), and its labels."""
  config = clf.config.data.copy_and_resolve_references()
  config.pp_eval = clf.preprocessing.host_spec
  images, labels = [], []
  for batch in data.as_numpy(data.eval_dataset(data.from_config(config), config, batch_size=120)):
    images.append(batch["image"][batch["mask"] > 0])
    labels.append(batch["labels"][batch["mask"] > 0].argmax(-1))
  return np.round(np.concatenate(images)).astype(np.uint8), np.concatenate(labels)


def untrained(name: str, image_size: int) -> Classifier:
  """A randomly initialised `name` with 10 classes on the quickstart's digits at `image_size`, in the input
  convention of its family (ViT/BiT [-1, 1], ResNet v1.5 ImageNet mean and std)."""
  config = quickstart.get_config()
  config.model = ml_collections.ConfigDict({"name": name})
  value_op = "normalize" if name.startswith("resnet") else "value_range(-1, 1)"
  config.data.pp_eval = f"resize({image_size})|to_rgb|{value_op}"
  model = models.from_config(config.model, num_classes=10)
  variables = models.init_variables(model, jax.random.key(0), image_shape=(image_size, image_size, 3))
  head = variables["params"]["head"]  # Zero-initialised: every class would tie.
  head["kernel"] = 0.02 * jax.random.normal(jax.random.key(1), head["kernel"].shape)
  return Classifier(
    model, variables, class_names=[str(d) for d in range(10)], pp_eval=config.data.pp_eval, config=config
  )


def runner(path: str, format: str) -> Callable[[np.ndarray], np.ndarray]:
  """`probabilities(images)` of an exported model in its own runtime."""
  if format == "saved_model":
    signature = tf.saved_model.load(path).signatures["serving_default"]
    return lambda x: signature(images=tf.constant(x))["probabilities"].numpy()
  if format == "onnx":
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda x: session.run(["probabilities"], {"images": x})[0]
  interpreters = {}  # One per batch shape: resizing reallocates every tensor.

  def run(x):
    if x.shape not in interpreters:
      interpreter = tf.lite.Interpreter(model_path=path, num_threads=os.cpu_count())
      interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x.shape)
      interpreter.allocate_tensors()
      interpreters[x.shape] = interpreter
    interpreter = interpreters[x.shape]
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

  return run


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
  for _ in range(3):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure(name: str, size: int, predict: Callable, images: np.ndarray, labels: np.ndarray, reference, repeats: int):
  """One markdown row: size, batch-1 latency, batch-32 throughput, accuracy, agreement with JAX."""
  probabilities = np.concatenate([predict(images[i : i + 32]) for i in range(0, len(images), 32)])
  before = cpu_ticks()
  latency = median_seconds(lambda: predict(images[:1]), repeats)
  batch = median_seconds(lambda: predict(images[:32]), repeats)
  share = other_share(before, cpu_ticks())
  reference = probabilities if reference is None else reference
  accuracy = np.mean(probabilities.argmax(-1) == labels)
  agree = np.mean(probabilities.argmax(-1) == reference.argmax(-1))
  print(
    f"| {name} | {size / 1e6:.2f} MB | {1e3 * latency:.2f} ms | {32 / batch:,.0f} img/s | {100 * accuracy:.2f}% "
    f"| {100 * agree:.2f}% | {np.abs(probabilities - reference).max():.1e} | {100 * share:.0f}% |",
    flush=True,
  )
  return probabilities


def size_of(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/qs")
  parser.add_argument("--model", default=None, help="an untrained registered model instead of the run")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--limit", type=int, default=None, help="eval images to score (default: all)")
  parser.add_argument("--repeats", type=int, default=50)
  args = parser.parse_args()
  tf.config.set_visible_devices([], "GPU")
  clf = untrained(args.model, args.image_size) if args.model else Classifier.load(args.workdir, batch_size=32)
  images, labels = (x[: args.limit] for x in eval_images(clf))
  representative = exporters.representative_images(clf.config.data, clf)
  source = clf.source or f"{args.model} (untrained)"
  print(f"{source}: {len(images)} eval images {images.shape[1:]}, {os.cpu_count()} CPU cores\n")
  print("| format | size | batch-1 latency | batch-32 throughput | accuracy | agree | max abs dp | other CPU |")
  print("|---|---|---|---|---|---|---|---|")
  serve = jax.jit(clf.serving_function())  # What Classifier.predict runs after the host preprocessing.
  param_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(clf.variables))
  predict = lambda x: np.asarray(serve(clf.variables, x))  # noqa: E731
  reference = measure("JAX (jit), parameters", param_bytes, predict, images, labels, None, args.repeats)
  with tempfile.TemporaryDirectory() as scratch:
    for format, quantize in EXPORTS:
      path = os.path.join(scratch, f"{quantize}.{format}")
      start = time.perf_counter()
      exporters.export(clf, path, format=format, quantize=quantize, representative=representative)
      print(f"<!-- {format} {quantize}: exported in {time.perf_counter() - start:.1f}s -->", file=sys.stderr)
      measure(f"{format} {quantize}", size_of(path), runner(path, format), images, labels, reference, args.repeats)


if __name__ == "__main__":
  main()
