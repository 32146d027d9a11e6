"""Inference on this CPU, per model: vitjax's runtimes and exported formats against timm, side by side.

    python -m vitjax.main --config=configs/quickstart.py --workdir=/tmp/qs        # the trained quickstart ViT
    pip install torch timm onnxruntime   # into the environment of --torch_python (not a requirement of vitjax)
    python benchmarks/inference.py --quickstart=/tmp/qs --torch_python=/venv-torch/bin/python
    python benchmarks/inference.py --models resnet50 vit_s16 --repeats 50

Per model, one markdown row per runtime: `vitjax.Classifier` (jit, float32), the exported SavedModel, TFLite
float32 and int8 (interpreter with one thread per core; XNNPACK is its default delegate), ONNX Runtime float32 and
int8, and TFLite and ONNX exported for a fixed batch of one (`--batch_size=1`: batch 32 is then 32 calls); with
`--torch_python`, timm in eager mode (`torch.inference_mode`) and timm exported to ONNX (ONNX Runtime).
timm runs the very weights vitjax runs: each model is written as a timm repo (`vitjax.transfer.publish`) and loaded
with `timm.create_model("local-dir:...")`, so "agree" (top-1 equal to JAX's) measures every runtime alike.

Batch-1 latency is the median and 90th percentile of `--repeats` calls after warm-up, each on the next image;
batch-32 throughput the median of `--batch_repeats` calls. vitjax's formats take uint8 images and normalise inside;
timm takes the normalised float tensor (its normalisation is not timed). The listed models are untrained (random
head, 10 classes) on the digits resized to 224: sizes and speeds are real, accuracy is chance. The quickstart ViT
(`--quickstart`, a trained run) shows what int8 costs in accuracy. Other processes' share of the CPU during each
row is printed, since on a shared machine it distorts every figure.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("resnet50", "mobilenet_v3_large", "efficientnet_b0", "vit_s16")
# (format, quantize, batch size fixed at export or None for any): a fixed batch of 1 runs one image at a time.
FORMATS = (
  ("saved_model", "none", None),
  ("tflite", "none", None),
  ("tflite", "int8", None),
  ("onnx", "none", None),
  ("onnx", "int8", None),
  ("tflite", "none", 1),
  ("tflite", "int8", 1),
  ("onnx", "none", 1),
)
BATCH = 32


def timings(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, args) -> dict[str, float]:
  """Batch-1 median and p90 latency (ms) over `args.repeats` calls, and batch-32 images/s."""
  for i in range(3):
    predict(images[i : i + 1])
  single = []
  for i in range(args.repeats):
    image = images[i % len(images)][None]
    start = time.perf_counter()
    predict(image)
    single.append(time.perf_counter() - start)
  predict(images[:BATCH])
  batched = []
  for _ in range(args.batch_repeats):
    start = time.perf_counter()
    predict(images[:BATCH])
    batched.append(time.perf_counter() - start)
  return {
    "median_ms": 1e3 * statistics.median(single),
    "p90_ms": 1e3 * float(np.percentile(single, 90)),
    "images_per_s": BATCH / statistics.median(batched),
  }


def probabilities(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
  return np.concatenate([np.asarray(predict(images[i : i + BATCH])) for i in range(0, len(images), BATCH)])


def measure(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, args) -> dict:
  """Timings, the probabilities of every image, and other processes' CPU share meanwhile."""
  from cpu_share import cpu_ticks, other_share

  before = cpu_ticks()
  result = timings(predict, images, args)
  result["other_cpu"] = other_share(before, cpu_ticks())
  result["probabilities"] = probabilities(predict, images)
  return result


def vitjax_results(clf, images: np.ndarray, args) -> dict[str, dict]:
  """{runtime: measure(...)} of the jitted Classifier and of every exported format."""
  import jax
  from export_formats import runner, size_of

  from vitjax.deploy import exporters

  serve = jax.jit(clf.serving_function())
  results = {"vitjax jit (float32)": measure(lambda x: np.asarray(serve(clf.variables, x)), images, args)}
  results["vitjax jit (float32)"]["size"] = sum(np.asarray(x).nbytes for x in jax.tree.leaves(clf.variables))
  representative = exporters.representative_images(clf.config.data, clf)
  with tempfile.TemporaryDirectory() as scratch:
    for format, quantize, batch_size in FORMATS:
      path = os.path.join(scratch, f"{quantize}_{batch_size}.{format}")
      kwargs = dict(quantize=quantize, representative=representative, batch_size=batch_size)
      exporters.export(clf, path, format=format, **kwargs)
      name = f"{format} {'float32' if quantize == 'none' else quantize}" + (
        f", batch {batch_size}" if batch_size else ""
      )
      predict = runner(path, format) if batch_size is None else one_at_a_time(runner(path, format))
      results[name] = {**measure(predict, images, args), "size": size_of(path)}
  return results


def one_at_a_time(predict: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
  """A model exported for batches of one, called once per image of a batch."""
  return lambda x: np.concatenate([np.asarray(predict(x[i : i + 1])) for i in range(len(x))])


def timm_results(clf, source: str, images: np.ndarray, args) -> dict[str, dict]:
  """timm eager and timm's ONNX export of the same weights, measured in a worker under `args.torch_python`."""
  import jax

  from vitjax.transfer import publish

  with tempfile.TemporaryDirectory() as scratch:
    publish.write_classifier(clf, os.path.join(scratch, "repo"), source=source)
    normalised = np.asarray(jax.jit(clf.preprocessing.normalize)(images)).transpose(0, 3, 1, 2)
    np.save(os.path.join(scratch, "images.npy"), np.ascontiguousarray(normalised, np.float32))
    command = [args.torch_python, os.path.abspath(__file__), f"--timm_worker={scratch}"]
    command += [f"--repeats={args.repeats}", f"--batch_repeats={args.batch_repeats}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
      raise RuntimeError(f"the timm worker failed:\n{done.stderr[-3000:]}")
    results = json.loads(done.stdout.splitlines()[-1])
  for result in results.values():
    result["probabilities"] = np.asarray(result["probabilities"])
  return results


def timm_worker(folder: str, args) -> None:
  """Under the torch Python: timm eager and ONNX Runtime on timm's ONNX export; one JSON line on stdout."""
  import onnxruntime
  from timm_import import import_timm

  timm, torch = import_timm()
  torch.set_num_threads(os.cpu_count())
  model = timm.create_model(f"local-dir:{os.path.join(folder, 'repo')}", pretrained=True).eval()
  images = np.load(os.path.join(folder, "images.npy"))

  def eager(x):
    with torch.inference_mode():
      return torch.softmax(model(torch.from_numpy(x)), -1).numpy()

  path = os.path.join(folder, "timm.onnx")
  example = torch.from_numpy(images[:1])
  torch.onnx.export(model, (example,), path, input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
  session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  onnx = lambda x: _softmax(session.run(None, {"x": x})[0])  # noqa: E731
  params = sum(p.numel() * p.element_size() for p in model.parameters())
  results = {"timm eager (float32)": {**measure(eager, images, args), "size": params}}
  results["timm onnx (float32)"] = {**measure(onnx, images, args), "size": os.path.getsize(path)}
  for result in results.values():
    result["probabilities"] = result["probabilities"].tolist()
  print(json.dumps(results))


def _softmax(logits: np.ndarray) -> np.ndarray:
  exp = np.exp(logits - logits.max(-1, keepdims=True))
  return exp / exp.sum(-1, keepdims=True)


def table(name: str, results: dict[str, dict], labels: np.ndarray, *, trained: bool) -> list[str]:
  """Markdown rows of one model: size, latency, throughput, accuracy (trained runs only), agreement with JAX."""
  reference = results["vitjax jit (float32)"]["probabilities"].argmax(-1)
  rows = []
  for runtime, r in results.items():
    predicted = r["probabilities"].argmax(-1)
    accuracy = f"{100 * np.mean(predicted == labels):.2f}%" if trained else "(untrained)"
    rows.append(
      f"| {name} | {runtime} | {r['size'] / 1e6:.2f} MB | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
      f"{r['images_per_s']:,.0f} | {accuracy} | {100 * np.mean(predicted == reference):.1f}% | "
      f"{100 * r['other_cpu']:.0f}% |"
    )
  return rows


def run_model(name: str, args) -> list[str]:
  """Every runtime of one model (`quickstart`: the trained run at `args.quickstart`)."""
  from export_formats import eval_images, untrained

  from vitjax.deploy.classifier import Classifier

  trained = name == "quickstart"
  clf = Classifier.load(args.quickstart, batch_size=BATCH) if trained else untrained(name, args.image_size)
  images, labels = (x[: args.limit] for x in eval_images(clf))
  results = vitjax_results(clf, images, args)
  if args.torch_python:
    with tempfile.TemporaryDirectory() as source:  # An untrained model has no run directory.
      results.update(timm_results(clf, args.quickstart if trained else source, images, args))
  return table(name, results, labels, trained=trained)


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="*", default=list(MODELS), help="untrained models (none: the quickstart only)")
  parser.add_argument("--quickstart", default="", help="a trained quickstart run: its row shows accuracy")
  parser.add_argument("--torch_python", default="", help="a Python with torch, timm and onnxruntime: timm's rows")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--limit", type=int, default=128, help="eval images scored per runtime")
  parser.add_argument("--repeats", type=int, default=50, help="batch-1 calls timed")
  parser.add_argument("--batch_repeats", type=int, default=5, help="batch-32 calls timed")
  parser.add_argument("--timm_worker", default="", help=argparse.SUPPRESS)
  return parser.parse_args()


def main() -> None:
  args = parse_args()
  sys.path.insert(0, HERE)
  if args.timm_worker:
    timm_worker(args.timm_worker, args)
    return
  sys.path.insert(0, os.path.dirname(HERE))
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")
  names = (["quickstart"] if args.quickstart else []) + list(args.models)
  print(f"{os.cpu_count()} CPU cores; batch-1 latency in ms over {args.repeats} calls, batch-{BATCH} images/s\n")
  print("| model | runtime | size | batch-1 median | batch-1 p90 | batch-32 img/s | accuracy | agree | other CPU |")
  print("|---|---|---|---|---|---|---|---|---|", flush=True)
  for name in names:
    for row in run_model(name, args):
      print(row, flush=True)


if __name__ == "__main__":
  main()
