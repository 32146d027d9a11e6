"""A Classifier as a file other runtimes load: TensorFlow SavedModel, TFLite (float32, float16 or int8) and ONNX.

Every exported model takes a uint8 batch [N, H, W, C] (N any, or fixed by `batch_size`) at the model's input
size (the host ops of `pp_eval`, such as resize and crop, are the caller's), normalises it inside and returns class
probabilities [N, num_classes]; a NaFlex model takes [N, L, P*P*C + 3] at the sequence length L it was exported
at: each image's uint8 patches, packed with their (row, column, validity) by `pp_eval`'s host ops (resize_to_seq,
patchify). The paths:

- SavedModel: jax2tf (StableHLO in an XlaCallModule op) behind a `serving_default` signature, batch-polymorphic
  unless `batch_size` fixes it.
- TFLite: TFLiteConverter on that SavedModel; int8 calibrates activation ranges on the run's own images.
- ONNX: tf2onnx on the float TFLite file (tf2onnx cannot read XlaCallModule ops, and jax2onnx requires an older
  orbax-checkpoint than ours); int8 through onnxruntime's static quantisation, calibrated the same way.

Beside each file, `PATH.json` records what a consumer needs: input shape, class names, format, quantisation, source.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf
from jax.experimental import jax2tf

from vitjax import data
from vitjax.deploy.classifier import Classifier
from vitjax.deploy.formats import check
from vitjax.errors import ConfigError
from vitjax.models import convolution

INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
# The TFLite ops that int8 quantisation turns integer: every weight and nearly all the arithmetic. The others
# (LayerNorm statistics, softmax, attention's activation-by-activation matmuls, GELU) stay float32: quantised, their
# outputs collapse (TFLite's int8 division fails outright on a softmax sum that rounds to zero).
INT8_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
REPRESENTATIVE_IMAGES = 300


def export(
  classifier: Classifier,
  path: str,
  *,
  format: str,
  quantize: str = "none",
  representative: np.ndarray | None = None,
  image_size: int | None = None,
  batch_size: int | None = None,
) -> dict[str, Any]:
  """Writes `classifier` to `path` in `format` and the sidecar `path.json`; returns the sidecar's record.

  int8 needs `representative`: a few hundred host-preprocessed uint8 images of the training data
  (`representative_images`). `image_size` is needed only when `pp_eval` keeps the input size (no resize or crop).
  `batch_size` fixes the batch (None: any); with every shape known, TFLite (XNNPACK) and onnxruntime run the
  graph without shape arithmetic, the fastest way to serve one image at a time.
  """
  check(format, quantize)
  if batch_size is not None and batch_size < 1:
    raise ConfigError(f"batch_size={batch_size} must be a positive number of images, or left out for any batch.")
  input_shape = _input_shape(classifier, image_size)
  if quantize == "int8" and (representative is None or not len(representative)):
    raise ConfigError("int8 quantisation needs representative images of the training data to calibrate on.")
  with tempfile.TemporaryDirectory() as scratch:
    saved_model = path if format == "saved_model" else os.path.join(scratch, "saved_model")
    if format == "saved_model" and os.path.exists(path):
      if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise ConfigError(f"{path!r} exists and is not a SavedModel: choose a new output path.")
      shutil.rmtree(path)  # An earlier export: replaced whole, so that no stale variable file stays.
    write_saved_model(classifier, saved_model, input_shape, batch_size=batch_size)
    calibration = calibration_batches(representative, batch_size or 1)
    if format == "tflite":
      _write_bytes(path, tflite_model(saved_model, quantize=quantize, calibration=calibration))
    elif format == "onnx":
      from vitjax.deploy import onnx_graph  # tf2onnx and onnxruntime load in seconds: only when asked for.

      float_tflite = os.path.join(scratch, "model.tflite")
      _write_bytes(float_tflite, tflite_model(saved_model, quantize="none"))
      onnx_graph.from_tflite(float_tflite, path, input_name=INPUT_NAME, output_name=OUTPUT_NAME)
      if quantize == "int8":
        onnx_graph.quantize_int8(path, path, calibration, input_name=INPUT_NAME)
  record = {
    "format": format,
    "quantize": quantize,
    "input_shape": list(input_shape),
    "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [batch_size or "N", *input_shape]},
    "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [batch_size or "N", len(classifier.class_names)]},
    "activation": classifier.activation,
    "class_names": classifier.class_names,
    "pp_eval": classifier.preprocessing.spec,
    "host_preprocessing": classifier.preprocessing.host_spec,
    "source": classifier.source,
  }
  with open(f"{path}.json", "w") as f:
    json.dump(record, f, indent=2)
  return record


def write_saved_model(
  classifier: Classifier, path: str, input_shape: tuple[int, ...], *, batch_size: int | None = None
) -> None:
  """A SavedModel whose `serving_default(images)` gives `{"probabilities": ...}` for batches of `batch_size` (None:
  any); the weights are stored as TF variables, the computation as the JAX function's StableHLO."""
  shape = ", ".join(map(str, input_shape))  # (height, width, channels), or NaFlex's (sequence, packed patch).
  polymorphic = None if batch_size else [None, f"(b, {shape})"]
  convert = jax2tf.convert(classifier.serving_function(), polymorphic_shapes=polymorphic, with_gradient=False)
  module = tf.Module()
  module.weights = tf.nest.map_structure(lambda x: tf.Variable(np.asarray(x), trainable=False), classifier.variables)

  @tf.function(input_signature=[tf.TensorSpec([batch_size, *input_shape], tf.uint8, name=INPUT_NAME)], autograph=False)
  def serve(images):
    return {OUTPUT_NAME: convert(module.weights, images)}

  module.serve = serve
  with convolution.portable():  # Traced here: convolutions as the converters' own ops, not CPU-tuned slices.
    tf.saved_model.save(module, path, signatures={"serving_default": serve})


def tflite_model(saved_model: str, *, quantize: str, calibration: np.ndarray | None = None) -> bytes:
  """The SavedModel as a TFLite flatbuffer: float32, float16 weights, or int8 (weights and activations of the
  `INT8_OPS`, with ranges calibrated on the `calibration` batches [K, N, ...], `calibration_batches`)."""
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
  if quantize == "float16":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  if quantize != "int8":
    return converter.convert()
  float_ops = sorted(set(tflite_op_names(converter.convert())) - set(INT8_OPS))
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = lambda: _one_by_one(calibration)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
  # The quantisation debugger is TFLite's interface for keeping chosen op types in float32.
  debugger = tf.lite.experimental.QuantizationDebugger(
    converter=converter,
    debug_dataset=lambda: _one_by_one(calibration),
    debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=float_ops),
  )
  return debugger.get_nondebug_quantized_model()


def tflite_op_names(model: bytes) -> list[str]:
  """The builtin op names of a TFLite flatbuffer, one per node."""
  return [op["op_name"] for op in tf.lite.Interpreter(model_content=model)._get_ops_details()]


def representative_images(
  config: ml_collections.ConfigDict, classifier: Classifier, *, count: int = REPRESENTATIVE_IMAGES
) -> np.ndarray:
  """The first `count` images of the run's training split (in the source's fixed order), through the host ops of
  `pp_eval`: what the model saw in training, in the exported model's input form."""
  source = data.from_config(config)
  data.prepare(source)
  host = data.at_seq_len(config).copy_and_resolve_references()  # A NaFlex run's host spec is at its own length.
  host.pp_eval = classifier.preprocessing.host_spec
  size = min(count, data.num_examples(source, config.train_split))
  images = []
  for batch in data.as_numpy(data.eval_dataset(source, host, batch_size=min(size, 100), split=config.train_split)):
    images.extend(batch["image"][batch["mask"] > 0])
    if len(images) >= size:
      break
  return np.round(np.stack(images[:size])).astype(np.uint8)


def _input_shape(classifier: Classifier, image_size: int | None) -> tuple[int, ...]:
  """(height, width, channels) of the exported model's input, or for NaFlex (sequence length, P*P*C + 3): packed
  uint8 patches then (row, column, validity); the run's pp_eval must end with the normalisation (then patchify)."""
  if classifier.preprocessing.normalization is None:
    raise ConfigError(
      f"Export needs a pp_eval that ends with value_range or normalize (it moves into the model), got "
      f"{classifier.preprocessing.spec!r}."
    )
  if classifier.input_shape is not None:
    return classifier.input_shape
  if not image_size:
    raise ConfigError(
      f"pp_eval={classifier.preprocessing.spec!r} keeps the input size: give the model's input size (--image_size)."
    )
  channels = classifier.preprocessing.pixels(np.zeros((image_size, image_size, 3), np.uint8)).shape[-1]
  return (image_size, image_size, channels)


def calibration_batches(images: np.ndarray | None, batch_size: int) -> np.ndarray | None:
  """`images` in batches [K, batch_size, ...] as the exported model takes them, the last one filled from the start."""
  if images is None or not len(images):
    return images
  count = -(-len(images) // batch_size) * batch_size
  return np.resize(images, (count, *images.shape[1:])).reshape(-1, batch_size, *images.shape[1:])


def _one_by_one(batches: np.ndarray) -> Iterator[list[np.ndarray]]:
  """Calibration batches one at a time, as TFLite's representative datasets are read."""
  for batch in batches:
    yield [batch]


def _write_bytes(path: str, contents: bytes) -> None:
  """`contents` at `path`, its folder made if missing."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    f.write(contents)
