"""Deployment: the ensemble's knowledge distilled into the fastest candidate (the `distill` objective), a
temperature fitted on the validation split, and an int8 export (``vitjax.deploy.exporters``) with its size and
per-image latency. Test accuracy waits for the report, which touches the test split once.

The `distill` objective takes one teacher checkpoint: the teacher is the ensemble's best member on the validation
split, not the averaged ensemble (an ensemble teacher would need a teacher of several checkpoints in the loop).
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


def export(workdir: str, path: str, options: ml_collections.ConfigDict) -> dict:
  """The run exported as `options.format` with `options.quantize`; its size and median latency per image."""
  classifier = Classifier.load(workdir)
  representative = exporters.representative_images(classifier.config.data, classifier)
  record = exporters.export(
    classifier, path, format=options.format, quantize=options.quantize, representative=representative
  )
  run_model = model_runner(path, options.format)
  latencies = []
  for image in representative[: options.latency_images + 1]:
    start = time.perf_counter()
    run_model(image[None])
    latencies.append(time.perf_counter() - start)
  return {
    "path": path,
    "format": options.format,
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
  path = os.path.join(workdir, f"model_{workflow.deploy.quantize}.{workflow.deploy.format}")
  return {
    **record,
    "teacher": teacher_dir,
    "teacher_model": teacher.model.name,
    "temperature": temperature,
    "export": export(run_dir, path, workflow.deploy),
  }
