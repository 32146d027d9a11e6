"""A trained run in use: the Classifier API, the predict command on files, and the exported formats against JAX."""

import csv
import json
import os
import re
import subprocess
import sys

import flax
import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

import vitjax
from vitjax import checkpoints, data, models
from vitjax.data import preprocess
from vitjax.deploy import exporters
from vitjax.deploy.classifier import Classifier
from vitjax.deploy.inputs import Preprocessing, UnreadableFileError
from vitjax.models import convolution

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(digits_dir, tmp_path_factory):
  """The quickstart model after 150 steps of 128 (about 93% test accuracy: enough to judge int8 agreement), with
  an EMA and checkpoints at steps 75 and 150; and the test digits, raw and as the exported models take them."""
  workdir = str(tmp_path_factory.mktemp("run"))
  overrides = {
    "data.data_dir": digits_dir,
    "total_steps": 150,
    "batch_size": 128,
    "eval_batch_size": 120,
    "log_every": 75,
    "eval_every": 75,
    "checkpoint_every": 75,
    "schedule.warmup_steps": 10,
    "optimizer.learning_rate": 2e-3,
    "ema_decay": 0.9,
  }
  command = [sys.executable, "-m", "vitjax.main", "--config=configs/quickstart.py", f"--workdir={workdir}"]
  command += [f"--config.{key}={value}" for key, value in overrides.items()]
  # One device: on the 8 simulated ones of the other tests every step of this small model takes four times longer.
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
  subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  config = checkpoints.load_run(workdir).config
  raw, labels = _digits(config.data, "")
  classifier = Classifier.load(workdir, ema=False)
  model_input, _ = _digits(config.data, classifier.preprocessing.host_spec)
  return {"workdir": workdir, "results": results, "raw": raw, "labels": labels, "input": model_input, "clf": classifier}


def _digits(config, pp_eval, split="test"):
  """A digits split through `pp_eval` as uint8 images, and the labels."""
  config = config.copy_and_resolve_references()
  config.pp_eval = pp_eval
  images, labels = [], []
  for batch in data.as_numpy(data.eval_dataset(data.from_config(config), config, batch_size=120, split=split)):
    images.append(batch["image"][batch["mask"] > 0])
    labels.append(batch["labels"][batch["mask"] > 0].argmax(-1))
  return np.concatenate(images).astype(np.uint8), np.concatenate(labels)


def _write_pngs(images, labels, folder):
  paths = []
  for i, (image, label) in enumerate(zip(images, labels)):
    os.makedirs(os.path.join(folder, str(label)), exist_ok=True)
    paths.append(os.path.join(folder, str(label), f"{i:04d}.png"))
    tf.io.write_file(paths[-1], tf.io.encode_png(image))
  return paths


def test_classifier_reproduces_the_eval_accuracy_on_arrays_and_files(run, tmp_path):
  clf = run["clf"]
  probabilities = clf.predict(run["raw"])  # 8x8 grayscale arrays: the run's pp_eval resizes and makes them RGB.
  assert probabilities.shape == (360, 10) and np.allclose(probabilities.sum(-1), 1.0, atol=1e-5)
  assert np.mean(probabilities.argmax(-1) == run["labels"]) == pytest.approx(run["results"]["accuracy"], abs=1e-9)
  paths = _write_pngs(run["raw"][:5], run["labels"][:5], str(tmp_path))
  small_batches = Classifier.load(run["workdir"], ema=False, batch_size=3)  # Two batches, the second one padded.
  assert np.allclose(small_batches.predict(paths), probabilities[:5], atol=1e-6)
  top = clf.top_k([paths[0]], k=3)[0]
  assert [name for name, _ in top] == [clf.class_names[i] for i in np.argsort(-probabilities[0])[:3]]
  assert top[0][1] == pytest.approx(probabilities[0].max(), abs=1e-6)
  (tmp_path / "broken.png").write_bytes(b"not an image")
  with pytest.raises(UnreadableFileError, match="broken.png"):
    clf.predict([paths[0], str(tmp_path / "broken.png")])


def test_features_are_what_the_head_sees(run):
  clf = run["clf"]
  features = clf.features(run["raw"][:8])
  head = clf.variables["params"]["head"]
  logits = features @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
  assert features.shape == (8, 128)
  assert np.allclose(np.asarray(jax.nn.softmax(logits)), clf.predict(run["raw"][:8]), atol=1e-5)


def test_load_chooses_step_ema_and_reads_npz(run, tmp_path):
  workdir, images = run["workdir"], run["raw"][:16]
  saved = checkpoints.load_run(workdir)
  kernel = lambda variables: np.asarray(variables["params"]["head"]["kernel"])  # noqa: E731
  default = Classifier.load(workdir)  # The run kept an EMA: it is used unless told otherwise.
  assert "EMA" in default.source and np.array_equal(kernel(default.variables), saved.ema_params["head"]["kernel"])
  assert np.array_equal(kernel(run["clf"].variables), saved.params["head"]["kernel"])
  assert not np.array_equal(saved.ema_params["head"]["kernel"], saved.params["head"]["kernel"])
  earlier = Classifier.load(workdir, step=75, ema=False)
  assert "step 75" in earlier.source and not np.allclose(earlier.predict(images), run["clf"].predict(images))
  npz = str(tmp_path / "weights.npz")
  np.savez(npz, **flax.traverse_util.flatten_dict(saved.params, sep="/"))
  from_npz = Classifier.load(
    npz, model=saved.config.model, class_names=saved.class_names, pp_eval=saved.config.data.pp_eval
  )
  assert np.allclose(from_npz.predict(images), run["clf"].predict(images), atol=1e-6)
  with pytest.raises(ValueError, match="model's name and the class names"):
    Classifier.load(npz)


def test_importing_vitjax_stays_cheap_and_exposes_classifier_lazily():
  check = "import sys, vitjax; print(sorted({'jax', 'tensorflow', 'flax'} & set(sys.modules)))"
  out = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, check=True).stdout
  assert out.strip() == "[]"
  assert vitjax.Classifier is Classifier


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
  """`exported(format, quantize)`: the path of the run's model in that form, written on first request."""
  folder, paths = tmp_path_factory.mktemp("exported"), {}

  def get(format, quantize="none"):
    if (format, quantize) not in paths:
      path = str(folder / f"{quantize}.{format}")
      clf = run["clf"]
      representative = exporters.representative_images(clf.config.data, clf) if quantize == "int8" else None
      exporters.export(clf, path, format=format, quantize=quantize, representative=representative)
      paths[format, quantize] = path
    return paths[format, quantize]

  return get


@pytest.mark.parametrize("format", ["saved_model", "tflite", "onnx"])
def test_float_exports_reproduce_the_jax_probabilities(run, exported, format):
  clf, images = run["clf"], run["input"]
  path = exported(format)
  with open(f"{path}.json") as f:
    sidecar = json.load(f)
  assert sidecar["input_shape"] == [32, 32, 3] and sidecar["class_names"] == clf.class_names
  assert (sidecar["format"], sidecar["quantize"]) == (format, "none") and run["workdir"] in sidecar["source"]
  assert np.abs(_run_exported(path, format, images) - clf.predict(images)).max() <= 1e-4


@pytest.mark.parametrize(
  "model_config, int8",
  [
    # The public ViT checkpoints pool the class token: a gather over the batch there would not convert.
    ({"name": "vit_micro16", "classifier": "token"}, False),
    # A ResNet's downsampling shortcut is a strided 1x1 convolution: a strided slice of the batch would not either;
    # its stem's max pool pads with -inf, which XNNPACK's int8 pad fails to prepare.
    ({"name": "resnet18", "width": 8, "stage_sizes": (1, 1)}, True),
  ],
)
def test_tflite_takes_any_batch(model_config, int8, tmp_path):
  model = models.from_config(ml_collections.ConfigDict(model_config), num_classes=10)
  variables = models.init_variables(model, jax.random.key(0), image_shape=(32, 32, 3))
  head = variables["params"]["head"]  # Zero-initialised: every class would tie.
  head["kernel"] = jax.random.normal(jax.random.key(1), head["kernel"].shape)
  clf = Classifier(model, variables, class_names=list("0123456789"), pp_eval="resize(32)|value_range(-1, 1)")
  exporters.export(clf, str(tmp_path / "model.tflite"), format="tflite")
  images = np.random.RandomState(0).randint(0, 256, (3, 32, 32, 3), np.uint8)
  assert np.abs(_run_exported(str(tmp_path / "model.tflite"), "tflite", images) - clf.predict(images)).max() <= 1e-4
  if int8:  # Runs in the interpreter's default (XNNPACK) delegate.
    exporters.export(clf, str(tmp_path / "int8.tflite"), format="tflite", quantize="int8", representative=images)
    np.testing.assert_allclose(_run_exported(str(tmp_path / "int8.tflite"), "tflite", images).sum(-1), 1.0, atol=0.02)


def test_a_fixed_batch_size_exports_static_shapes_that_agree_with_jax(tmp_path):
  model = models.from_config(ml_collections.ConfigDict({"name": "resnet20", "width": 8}), num_classes=10)
  variables = models.init_variables(model, jax.random.key(0), image_shape=(32, 32, 3))
  variables["params"]["head"]["kernel"] = jax.random.normal(jax.random.key(1), (32, 10))  # Zero-initialised.
  clf = Classifier(model, variables, class_names=list("0123456789"), pp_eval="resize(32)|value_range(-1, 1)")
  images = np.random.RandomState(0).randint(0, 256, (2, 32, 32, 3), np.uint8)
  with pytest.raises(vitjax.ConfigError, match="batch_size=0 must be a positive number of images"):
    exporters.export(clf, str(tmp_path / "zero.tflite"), format="tflite", batch_size=0)
  for format, quantize in (("tflite", "none"), ("onnx", "int8")):  # int8: 3 calibration images in batches of 2.
    path = str(tmp_path / f"model.{format}")
    record = exporters.export(
      clf, path, format=format, quantize=quantize, representative=images[[0, 1, 0]], batch_size=2
    )
    assert record["input"]["shape"] == [2, 32, 32, 3] and record["output"]["shape"] == [2, 10]
    if format == "tflite":
      shape = tf.lite.Interpreter(model_path=path).get_input_details()[0]["shape_signature"].tolist()
    else:
      import onnxruntime

      shape = onnxruntime.InferenceSession(path).get_inputs()[0].shape
    assert shape == [2, 32, 32, 3]
    tolerance = 1e-4 if quantize == "none" else 0.1
    assert np.abs(_run_exported(path, format, images) - clf.predict(images)).max() <= tolerance


def test_a_vit_exported_for_one_image_converts_tflites_fused_gelu_to_onnx(tmp_path):
  """With every shape known, TFLite's converter fuses the tanh GELU into one op, which tf2onnx cannot read alone."""
  import onnxruntime

  model = models.build("vit_micro16", num_classes=10)
  variables = models.init_variables(model, jax.random.key(0), image_shape=(32, 32, 3))
  variables["params"]["head"]["kernel"] = jax.random.normal(jax.random.key(1), (128, 10))
  clf = Classifier(model, variables, class_names=list("0123456789"), pp_eval="resize(32)|value_range(-1, 1)")
  path = str(tmp_path / "vit.onnx")
  exporters.export(clf, path, format="onnx", batch_size=1)
  image = np.random.RandomState(0).randint(0, 256, (1, 32, 32, 3), np.uint8)
  probabilities = onnxruntime.InferenceSession(path).run(None, {"images": image})[0]
  np.testing.assert_allclose(probabilities, clf.predict(image), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v3_small", "efficientnet_b0", "bit_r50x1", "convnext_tiny"])
def test_exported_graphs_hold_no_gather(name):
  """What the exporters trace (a batch of unknown size, convolution.portable()) has no gather, which TFLite cannot
  convert: option-A shortcuts are strided slices, a 1x1 map's features a squeeze (not x[:, 0, 0])."""
  model = models.from_config(ml_collections.ConfigDict({"name": name}), num_classes=10)
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), image_shape=(32, 32, 3)))
  clf = Classifier(model, {}, class_names=list("0123456789"), pp_eval="resize(32)|value_range(-1, 1)")  # Traced only.
  images = jax.ShapeDtypeStruct(jax.export.symbolic_shape("b, 32, 32, 3"), np.uint8)
  with convolution.portable():
    text = jax.export.export(jax.jit(clf.serving_function()))(variables, images).mlir_module()
  assert not re.findall(r"stablehlo\.(?:dynamic_)?gather", text)


def test_onnx_elementwise_ops_read_constants_without_their_broadcast_and_give_the_same_outputs():
  import onnx
  import onnxruntime
  from onnx import TensorProto, helper

  from vitjax.deploy import onnx_graph

  nodes = [
    helper.make_node("Shape", ["x"], ["shape"]),
    helper.make_node("Expand", ["c", "shape"], ["wide"]),
    helper.make_node("Mul", ["x", "wide"], ["scaled"]),  # x fixes the shape: the Expand goes.
    helper.make_node("Expand", ["c", "shape"], ["kept"]),
    helper.make_node("Mul", ["kept", "c"], ["both"]),  # Only constants: the Expand gives the shape, and stays.
    helper.make_node("Add", ["scaled", "both"], ["y"]),
  ]
  value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 3])  # noqa: E731
  constant = helper.make_tensor("c", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
  graph = helper.make_graph(nodes, "g", [value("x")], [value("y")], [constant])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx_graph.OPSET)], ir_version=8)
  before = model.SerializeToString()
  assert onnx_graph.drop_constant_broadcasts(model.graph) == 1
  onnx.checker.check_model(model)
  assert [n.op_type for n in model.graph.node].count("Expand") == 1
  x = np.random.RandomState(0).randn(4, 3).astype(np.float32)
  run = lambda m: onnxruntime.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
  np.testing.assert_array_equal(run(model.SerializeToString()), run(before))


@pytest.mark.parametrize(
  "spec", ["resize(6)|value_range(-1, 1)", "value_range(0, 1, 16, 240)", "normalize", "normalize((0.5,), (0.25,))"]
)
def test_the_normalisation_in_jax_is_the_eval_ops_arithmetic(spec):
  image = np.random.RandomState(0).randint(0, 256, (6, 6, 3), np.uint8)
  expected = preprocess.parse(spec)({"image": tf.constant(image)}, tf.zeros([2], tf.int64))["image"].numpy()
  steps = Preprocessing(spec)
  assert steps.host_spec == spec.rpartition("|")[0] and steps.input_shape == ((6, 6, 3) if "resize" in spec else None)
  np.testing.assert_allclose(np.asarray(steps.normalize(steps.pixels(image)[None]))[0], expected, rtol=0, atol=1e-6)


def test_naflex_preprocessing_patchifies_pixels_on_the_host_and_normalises_them_in_jax():
  image = np.random.RandomState(0).randint(0, 256, (10, 25, 3), np.uint8)
  spec = "resize_to_seq(12, 2)|normalize|patchify(2, 12)"
  expected = preprocess.parse(spec)({"image": tf.constant(image)}, tf.zeros([2], tf.int64))["image"].numpy()
  steps = Preprocessing(spec)
  assert steps.host_spec == "resize_to_seq(12, 2)|patchify(2, 12)" and steps.input_shape == (12, 2 * 2 * 3 + 3)
  packed = steps.pixels(image)
  assert packed[:, :-3].max() > 1 and set(np.unique(packed[:, -1])) == {0.0, 1.0}  # uint8 pixels, validity.
  np.testing.assert_allclose(np.asarray(steps.normalize(packed[None]))[0], expected, rtol=0, atol=1e-6)
  resized = preprocess.parse("resize_to_seq(12, 2)")({"image": tf.constant(image)}, tf.zeros([2], tf.int64))["image"]
  np.testing.assert_array_equal(steps.image(packed), resized.numpy())  # The patches put back: the resized image.


def test_a_naflex_model_exports_at_its_sequence_length(tmp_path):
  """Packed uint8 patches in, the Classifier's probabilities out, for images of any aspect ratio; ONNX goes through
  TFLite, so both converters take the exact GELU, the position-table resampling and the unpacking."""
  model = models.build("naflexvit_micro4", num_classes=3, hidden_size=16, mlp_dim=32, num_heads=2, num_layers=1)
  images = [np.random.RandomState(i).randint(0, 256, shape, np.uint8) for i, shape in enumerate([(9, 40), (50, 14)])]
  clf = Classifier(
    model, {}, class_names=list("abc"), pp_eval="resize_to_seq(20, 4)|value_range(-1, 1)|patchify(4, 20)"
  )
  packed = np.stack([clf.preprocessing.pixels(image) for image in images])
  variables = models.init_variables(model, jax.random.key(0), image_shape=packed.shape[1:])
  head = variables["params"]["head"]  # Zero-initialised: every class would tie.
  head["kernel"] = jax.random.normal(jax.random.key(1), head["kernel"].shape)
  clf = Classifier(model, variables, class_names=list("abc"), pp_eval=clf.preprocessing.spec)
  record = exporters.export(clf, str(tmp_path / "naflex.onnx"), format="onnx")
  assert record["input"]["shape"] == ["N", 20, 4 * 4 * 3 + 3]
  exported = _run_exported(str(tmp_path / "naflex.onnx"), "onnx", np.round(packed).astype(np.uint8))
  assert np.abs(exported - clf.predict(images)).max() <= 1e-5


def _run_exported(path, format, images):
  """Probabilities of an exported model, run by its own runtime."""
  if format == "saved_model":
    return tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()
  if format == "onnx":
    import onnxruntime

    return onnxruntime.InferenceSession(path).run(["probabilities"], {"images": images})[0]
  interpreter = tf.lite.Interpreter(model_path=path)
  interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], images.shape)
  interpreter.allocate_tensors()
  interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
  interpreter.invoke()
  return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_representative_images_are_the_runs_training_images_as_the_model_takes_them(run):
  representative = exporters.representative_images(run["clf"].config.data, run["clf"], count=40)
  train, _ = _digits(run["clf"].config.data.copy_and_resolve_references(), run["clf"].preprocessing.host_spec, "train")
  assert representative.dtype == np.uint8 and np.array_equal(representative, train[:40])


def test_int8_tflite_agrees_with_jax_and_is_a_third_of_the_size(run, exported):
  images, labels = run["input"], run["labels"]
  reference = run["clf"].predict(images).argmax(-1)
  int8 = _run_exported(exported("tflite", "int8"), "tflite", images).argmax(-1)
  assert np.mean(int8 == reference) >= 0.98
  assert np.mean(int8 == labels) >= np.mean(reference == labels) - 0.01
  assert os.path.getsize(exported("tflite", "int8")) <= os.path.getsize(exported("tflite")) / 3
  with open(exported("tflite", "int8"), "rb") as f:
    ops = exporters.tflite_op_names(f.read())
  assert "QUANTIZE" in ops and "FULLY_CONNECTED" in ops


def test_predict_command_on_a_folder_reproduces_the_eval_accuracy(run, tmp_path):
  folder, output = tmp_path / "digits", str(tmp_path / "predictions.csv")
  _write_pngs(run["raw"], run["labels"], str(folder))
  (folder / "3" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  command = [sys.executable, "-m", "vitjax.predict", f"--workdir={run['workdir']}", f"--input={folder}"]
  flags = [f"--output={output}", "--top_k=3", "--ema=false"]
  result = subprocess.run([*command, *flags], capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == f"361 files: 360 predicted, 1 unreadable; wrote {output}"
  with open(output) as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ["path", "label", "probability"] + [
    f"top{i}_{kind}" for i in (1, 2, 3) for kind in ("label", "probability")
  ] + ["error"]
  read = [row for row in rows if not row["error"]]
  accuracy = np.mean([row["label"] == os.path.basename(os.path.dirname(row["path"])) for row in read])
  assert len(read) == 360 and accuracy == pytest.approx(run["results"]["accuracy"], abs=1e-9)
  (broken,) = [row for row in rows if row["error"]]
  assert broken["path"].endswith("corrupt.png") and broken["label"] == "" and "not a decodable image" in broken["error"]


@pytest.mark.parametrize(
  "module, flags, message",
  [
    ("export", ["--format=keras", "--output=out"], "error: Unknown export format 'keras'; choose one of: saved_model"),
    ("predict", ["--input=."], "error: No run workdir or checkpoint file at '/no/such/run'."),
  ],
)
def test_commands_fail_on_bad_input_with_one_line(module, flags, message):
  command = [sys.executable, "-m", f"vitjax.{module}", "--workdir=/no/such/run", *flags]
  result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(message)
