"""Deployment: the ensemble's knowledge distilled into the fastest candidate (the `distill` objective, its teacher
the members' averaged logits), a temperature fitted on the validation split, and int8 exports (TFLite and ONNX,
``vitjax.deploy.exporters``) with their size and per-image latency. Test accuracy waits for the report, which
touches the test split once.
"""

import os
import time

import ml_collections
import numpy as np

from vitjax.deploy import exporters
from vitjax.deploy.classifier import Classifier
from vitjax.robustness import uncertainty
from vitjax.workflow import baseline, runs, tune


def student_config(
  workflow: ml_collections.ConfigDict,
  student: ml_collections.ConfigDict,
  teacher: ml_collections.ConfigDict,
  params: dict,
  teacher_dir: str,
) -> ml_collections.ConfigDict:
  """The student's run config: the tuned hyperparameters, the `distill` objective with the teacher's run."""
  config = tune.apply(student, {**params, "epochs": workflow.deploy.epochs}, evals=2)
  config.objective = "distill"
  config.distill.checkpoint = teacher_dir
  config.distill.model = teacher.model.copy_and_resolve_references()
  config.distill.alpha, config.distill.temperature = workflow.deploy.alpha, workflow.deploy.temperature
  return config


def export(workdir: str, folder: str, options: ml_collections.ConfigDict) -> list[dict]:
  """The run exported in each of `options.formats` with `options.quantize`; each file's size and latency."""
  classifier = Classifier.load(workdir)
  representative = exporters.representative_images(classifier.config.data, classifier)
  return [
    export_one(classifier, os.path.join(folder, f"model_{options.quantize}.{format}"), format, options, representative)
    for format in options.formats
  ]


def export_one(
  classifier: Classifier, path: str, format: str, options: ml_collections.ConfigDict, representative: np.ndarray
) -> dict:
  """One exported file: its size and median latency per image in its own runtime."""
  record = exporters.export(classifier, path, format=format, quantize=options.quantize, representative=representative)
  run_model = model_runner(path, format)
  latencies = []
  for image in representative[: options.latency_images + 1]:
    start = time.perf_counter()
    run_model(image[None])
    latencies.append(time.perf_counter() - start)
  return {
    "path": path,
    "format": format,
    "quantize": options.quantize,
    "size_bytes": os.path.getsize(path),
    "latency_ms": 1000 * float(np.median(latencies[1:])),  # The first call allocates.
    "input_shape": record["input_shape"],
  }


def model_runner(path: str, format: str):
  """`probabilities(uint8 images)` of an exported TFLite or ONNX file, in its own runtime."""
  if format == "onnx":
    import onnxruntime

    session = onnxruntime.InferenceSession(path)
    return lambda images: session.run(None, {exporters.INPUT_NAME: images})[0]
  import tensorflow as tf

  runner = tf.lite.Interpreter(model_path=path).get_signature_runner()
  return lambda images: runner(**{exporters.INPUT_NAME: images})[exporters.OUTPUT_NAME]


def run(
  workflow: ml_collections.ConfigDict,
  student: ml_collections.ConfigDict,
  teacher: ml_collections.ConfigDict,
  params: dict,
  teacher_dir: str,
  workdir: str,
  *,
  deadline: float,
) -> dict:
  """Distils, calibrates and exports; the deployed run directory and what was measured."""
  config = student_config(workflow, student, teacher, params, teacher_dir)
  run_dir = os.path.join(workdir, "student")
  record = baseline.run_record(
    student.model.name, run_dir, runs.train(config, run_dir, more_hooks=(runs.Deadline(deadline),))
  )
  val = runs.logits(config, [run_dir], "val")
  temperature = uncertainty.fit_temperature(val["logits"], val["labels"])
  return {
    **record,
    "teacher": teacher_dir,
    "teacher_model": teacher.model.name,
    "temperature": temperature,
    "exports": export(run_dir, workdir, workflow.deploy),
  }
