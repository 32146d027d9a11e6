"""`hf-hub:` models from an offline Hugging Face cache, and runs published as timm repos (`transfer.publish`).

The cache is laid out as `hf_hub_download` leaves it (`models--ORG--NAME/refs/main`, `snapshots/HASH/...`), with
`HF_HUB_OFFLINE=1`. Its repos are written by `publish.write`, whose weights use the inverse mappings; the forward
mappings are checked against hand-written timm layouts in test_timm_weights.py.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy
from PIL import Image

from vitjax import checkpoints, models, transfer
from vitjax.deploy.classifier import Classifier
from vitjax.errors import ConfigError
from vitjax.transfer import hub, publish, timm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT = ("vit_micro4", dict(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, num_registers=2, layerscale=0.1), 16)
ROUND_TRIPS = [
  VIT,
  ("vit_micro4", dict(hidden_size=32, num_layers=1, num_heads=4, mlp_dim=48, classifier="gap", qk_norm=True), 8),
  ("resnet18", {}, 32),
  ("convnext_tiny", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)), 32),
  ("mobilenet_v3_small", {}, 32),
  ("efficientnet_b0", {}, 32),
  ("swin_t", dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4)), 224),
]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
  """An empty offline Hub cache, for this process (huggingface_hub reads its settings once, at import) and for
  the commands it starts."""
  from huggingface_hub import constants

  cache = tmp_path / "hf-cache"
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  return cache


def add_repo(cache, repo_id: str, files: dict[str, str | bytes]) -> str:
  """`files` (name -> contents, or the path of a file to copy) as the cached main revision of `repo_id`."""
  commit = "0123456789abcdef0123456789abcdef01234567"
  root = cache / f"models--{repo_id.replace('/', '--')}"
  (root / "refs").mkdir(parents=True)
  (root / "refs" / "main").write_text(commit)
  snapshot = root / "snapshots" / commit
  snapshot.mkdir(parents=True)
  for name, contents in files.items():
    if isinstance(contents, bytes):
      (snapshot / name).write_bytes(contents)
    else:
      shutil.copy(contents, snapshot / name)
  return f"hf-hub:{repo_id}"


def add_folder(cache, repo_id: str, folder) -> str:
  return add_repo(cache, repo_id, {name: str(folder / name) for name in os.listdir(folder)})


def random_model(name: str, options: dict, size: int, num_classes: int = 3):
  """The module and random variables (BatchNorm variances positive), without compiling anything."""
  module = models.build(name, num_classes=num_classes, **options)
  shapes = jax.eval_shape(lambda: models.init_variables(module, jax.random.key(0), image_shape=(size, size, 3)))
  rng = np.random.default_rng(0)
  leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
  values = [
    rng.uniform(0.5, 2.0, x.shape).astype(np.float32)
    if jax.tree_util.keystr(path).endswith("['var']")
    else rng.normal(0, 0.2, x.shape).astype(np.float32)
    for path, x in leaves
  ]
  return module, jax.tree.unflatten(tree, values)


def write_repo(folder, name, options, size, class_names=("cat", "dog", "fish")):
  module, variables = random_model(name, options, size, len(class_names))
  repo = publish.Repo(name, module, variables, class_names, f"resize({size})|value_range(-1, 1)", (size, size))
  return module, variables, publish.write(repo, str(folder))


@pytest.mark.parametrize("name, options, size", ROUND_TRIPS, ids=lambda x: x if isinstance(x, str) else "")
def test_publish_load_publish_is_exact(hub_cache, tmp_path, name, options, size):
  module, variables, config = write_repo(tmp_path / "first", name, options, size)
  hub_model, loaded_module, loaded = hub.load_model(add_folder(hub_cache, "test/first", tmp_path / "first"))
  assert loaded_module == module and hub_model.class_names == ["cat", "dog", "fish"]
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  again = publish.Repo(
    hub_model.model.name, loaded_module, loaded, hub_model.class_names, hub_model.pp_eval, (size,) * 2
  )
  assert publish.write(again, str(tmp_path / "second")) == config
  first, second = (safetensors.numpy.load_file(str(tmp_path / d / "model.safetensors")) for d in ("first", "second"))
  assert first.keys() == second.keys()
  for key in first:
    np.testing.assert_array_equal(first[key], second[key])


def test_fine_tuning_starts_from_the_checkpoints_batch_statistics(tmp_path):
  _, variables, _ = write_repo(tmp_path, "mobilenet_v3_small", {}, 32)
  fresh = jax.tree.map(np.zeros_like, variables["batch_stats"])
  loaded = transfer.load_batch_stats(str(tmp_path / "model.safetensors"), fresh)
  jax.tree.map(np.testing.assert_array_equal, loaded, variables["batch_stats"])


def test_published_config_is_timms(tmp_path):
  _, _, config = write_repo(tmp_path, *VIT)
  assert config["architecture"] == "vit_tiny_patch16_224"
  assert config["model_args"] == dict(
    patch_size=4, embed_dim=32, depth=2, num_heads=2, img_size=16, mlp_ratio=2.0, act_layer="gelu_tanh",
    reg_tokens=2, init_values=0.1,
  )  # fmt: skip
  expected = dict(input_size=[3, 16, 16], interpolation="bilinear", crop_pct=1.0, crop_mode="squash")
  assert config["pretrained_cfg"] == {**expected, "mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": 3}
  state = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
  assert state["pos_embed"].shape == (1, 1 + 2 + 16, 32) and state["blocks.1.attn.qkv.weight"].shape == (96, 32)
  assert "timm.create_model" in (tmp_path / "README.md").read_text()


def test_classifier_from_hub_predicts_as_the_model(hub_cache, tmp_path):
  module, variables, _ = write_repo(tmp_path, *VIT)
  classifier = Classifier.load(add_folder(hub_cache, "test/vit", tmp_path))
  assert classifier.class_names == ["cat", "dog", "fish"]
  assert classifier.preprocessing.spec == "resize((16, 16), method='bilinear')|center_crop((16, 16))|value_range(-1, 1)"
  direct = Classifier(module, variables, class_names=["a", "b", "c"], pp_eval="resize(16)|value_range(-1, 1)")
  images = np.random.default_rng(1).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
  np.testing.assert_allclose(classifier.predict(images), direct.predict(images), atol=1e-6)


@pytest.mark.parametrize("classifier", ["gap", "token"])
def test_a_fixed_position_embedding_publishes_as_timms_table(hub_cache, tmp_path, classifier):
  options = dict(VIT[1], num_registers=0, posemb="sincos2d", classifier=classifier)
  module, variables, _ = write_repo(tmp_path, "vit_micro4", options, 16)
  loaded = Classifier.load(add_folder(hub_cache, "test/sincos", tmp_path))
  assert loaded.model.posemb == "learn"
  direct = Classifier(module, variables, class_names=["a", "b", "c"], pp_eval="resize(16)|value_range(-1, 1)")
  images = np.random.default_rng(4).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  np.testing.assert_allclose(loaded.predict(images), direct.predict(images), atol=1e-6)


def test_class_names_default_to_imagenet(hub_cache):
  config = {"architecture": "resnet18", "pretrained_cfg": {"input_size": [3, 224, 224], "crop_pct": 0.875}}
  name = add_repo(hub_cache, "test/in1k", {"config.json": json.dumps(config).encode()})
  resolved = hub.resolve(name)
  assert resolved.class_names[:2] == ["tench", "goldfish"] and len(resolved.class_names) == 1000
  assert resolved.pp_eval.startswith("resize_small(256, method='bilinear')|center_crop((224, 224))|normalize(")
  config = {"architecture": "convnext_tiny.fb_in22k", "num_classes": 21841, "model_args": {"ls_init_value": 1e-6}}
  resolved = hub.resolve(add_repo(hub_cache, "test/in22k", {"config.json": json.dumps(config).encode()}))
  assert resolved.class_names[-1] == "class_21840" and resolved.model.layer_scale_init == 1e-6


def test_pickle_only_repos_and_unknown_architectures_fail_in_one_line(hub_cache):
  config = json.dumps({"architecture": "resnet18"}).encode()
  name = add_repo(hub_cache, "test/pickled", {"config.json": config, "pytorch_model.bin": b"\x80\x04 code"})
  with pytest.raises(ConfigError, match=r"hf-hub:test/pickled holds only pytorch_model\.bin.*model\.safetensors"):
    Classifier.load(name)
  name = add_repo(hub_cache, "test/levit", {"config.json": json.dumps({"architecture": "levit_128"}).encode()})
  with pytest.raises(ConfigError, match=r"'levit_128' is not supported here; supported: .*resnet50.*vit_base_patch16"):
    Classifier.load(name)
  with pytest.raises(ConfigError, match=r"cannot get config\.json"):
    hub.resolve("hf-hub:test/absent")
  module = models.build("vit_micro4", num_classes=3, posemb="rope2d")
  with pytest.raises(ConfigError, match=r"timm's ViT has no posemb='rope2d'"):
    timm.for_model("vit_micro4")[0].model_args("vit_tiny_patch16_224", module, 8)


def _command(module: str, *flags: str) -> subprocess.CompletedProcess:
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
  run = subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO, env=env, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-3000:]
  return run


def _image_folder(root, classes=("circle", "square"), per_class=6) -> None:
  rng = np.random.default_rng(2)
  for k, name in enumerate(classes):
    (root / name).mkdir(parents=True)
    for i in range(per_class):
      pixels = rng.integers(0, 80, (16, 16, 3)) + 120 * k
      Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")


def test_predict_and_export_commands_take_a_hub_model(hub_cache, tmp_path):
  _, _, config = write_repo(tmp_path / "repo", *VIT)
  name = add_folder(hub_cache, "test/vit", tmp_path / "repo")
  _image_folder(tmp_path / "images", per_class=2)
  output = tmp_path / "predictions.csv"
  _command("vitjax.predict", f"--model={name}", f"--input={tmp_path / 'images'}", f"--output={output}")
  with open(output) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4 and {row["label"] for row in rows} <= {"cat", "dog", "fish"}
  _command("vitjax.export", f"--model={name}", "--format=timm", f"--output={tmp_path / 'again'}")
  assert json.loads((tmp_path / "again" / "config.json").read_text()) == config


def test_fine_tune_from_the_hub_then_publish_the_run(hub_cache, tmp_path):
  write_repo(tmp_path / "repo", *VIT)
  name = add_folder(hub_cache, "test/vit", tmp_path / "repo")
  _image_folder(tmp_path / "images")
  workdir, published = tmp_path / "run", tmp_path / "published"
  _command(
    "vitjax.main",
    f"--config=configs/folder.py:{tmp_path / 'images'},runlocal",
    f"--workdir={workdir}",
    f"--config.pretrained.path={name}",
    "--config.total_steps=2",
  )
  run = checkpoints.load_run(str(workdir))
  assert run.config.model.name == "vit_ti16" and run.config.model.hidden_size == 32
  assert run.config.data.pp_train == "inception_crop((16, 16))|flip_lr|value_range(-1, 1)"
  _command("vitjax.export", f"--workdir={workdir}", "--format=timm", f"--output={published}")
  config = json.loads((published / "config.json").read_text())
  assert config["label_names"] == ["circle", "square"] and config["architecture"] == "vit_tiny_patch16_224"
  assert "folder" in (published / "README.md").read_text()
  images = np.random.default_rng(3).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  from_run = Classifier.load(str(workdir)).predict(images)
  from_hub = Classifier.load(add_folder(hub_cache, "test/published", published)).predict(images)
  np.testing.assert_allclose(from_hub, from_run, atol=1e-6)
