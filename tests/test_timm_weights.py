"""timm/torchvision `.safetensors` state dicts: read without pickle, mapped onto the models, reported like npz files.

The state dicts here are written from a model's own random variables under the torch names, written out by hand
from timm's module names (not by inverting the converters), with kernels in torch's (out, in, kh, kw) layout.
"""

import re

import numpy as np
import pytest
import safetensors.numpy

from tests.support import evaluate, flat, images_of, random_variables
from vitjax import models, transfer


def torch_conv(kernel: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))


def with_random_statistics(variables, seed: int = 3):
  """BatchNorm statistics away from (0, 1), so that a missed or swapped statistic changes the logits."""
  rng = np.random.default_rng(seed)
  stats = {
    k: (rng.uniform(0.5, 2.0, v.shape) if k.endswith("var") else rng.normal(0, 0.3, v.shape))
    for k, v in flat(variables["batch_stats"]).items()
  }
  return {**variables, "batch_stats": _nest({k: v.astype(np.float32) for k, v in stats.items()})}


def _nest(flat_tree):
  tree = {}
  for key, value in flat_tree.items():
    *parents, leaf = key.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


_RESNET_NAMES = [
  (r"layer(\d)/block(\d+)/downsample_conv/kernel", r"layer\1.\2.downsample.0.weight"),
  (r"layer(\d)/block(\d+)/downsample_bn/", r"layer\1.\2.downsample.1."),
  (r"layer(\d)/block(\d+)/", r"layer\1.\2."),
  (r"head/kernel", "fc.weight"),
  (r"head/bias", "fc.bias"),
  (r"(conv\d)/kernel$", r"\1.weight"),
  (r"(bn\d)/scale$", r"\1.weight"),
  (r"(bn\d)/bias$", r"\1.bias"),
  (r"(bn\d)/mean$", r"\1.running_mean"),
  (r"(bn\d)/var$", r"\1.running_var"),
  (r"\.scale$", ".weight"),
  (r"\.mean$", ".running_mean"),
  (r"\.var$", ".running_var"),
]


def torch_resnet_state(variables) -> dict[str, np.ndarray]:
  """timm's `resnet18` state dict holding `variables`."""
  state = {}
  for collection in ("params", "batch_stats"):
    for key, value in flat(variables[collection]).items():
      name = key
      for pattern, replacement in _RESNET_NAMES:
        name = re.sub(pattern, replacement, name)
      value = np.asarray(value)
      if value.ndim == 4:
        value = torch_conv(value)
      elif name == "fc.weight":
        value = value.T
      state[name] = np.ascontiguousarray(value)
  state["bn1.num_batches_tracked"] = np.zeros((), np.int64)
  return state


def torch_bit_state(params) -> dict[str, np.ndarray]:
  """timm's `resnetv2_50x1_bit` state dict holding BiT `params`."""
  state = {}
  for key, value in flat(params).items():
    name = key.replace("root_block/standardized_conv2d/kernel", "stem.conv.weight")
    name = re.sub(r"^group_norm/", "norm/", name)
    name = name.replace("head/conv2d/", "head.fc/")
    name = re.sub(r"block(\d)/unit(\d+)/", lambda m: f"stages.{int(m[1]) - 1}.blocks.{int(m[2]) - 1}/", name)
    name = name.replace("a/proj/standardized_conv2d", "downsample.conv")
    for i, unit in enumerate("abc", 1):
      name = name.replace(f"/{unit}/group_norm", f".norm{i}").replace(f"/{unit}/standardized_conv2d", f".conv{i}")
    name = name.replace("/kernel", ".weight").replace("/scale", ".weight").replace("/bias", ".bias").replace("/", ".")
    value = np.asarray(value)
    state[name] = np.ascontiguousarray(torch_conv(value) if value.ndim == 4 else value)
  return state


@pytest.fixture(scope="module")
def resnet18():
  model = models.build("resnet18", num_classes=7)
  images = images_of((2, 32, 32, 3))
  variables = with_random_statistics(random_variables(model, images, scale=0.1))
  return model, variables, images


def test_resnet_state_dict_restores_every_variable(resnet18, tmp_path):
  model, variables, images = resnet18
  path = str(tmp_path / "model.safetensors")
  safetensors.numpy.save_file(torch_resnet_state(variables), path)
  restored, meta = transfer.load_variables(path, variables)
  assert meta == {}
  np.testing.assert_allclose(evaluate(model, restored, images), evaluate(model, variables, images), atol=1e-5)


def test_bit_state_dict_reproduces_logits(tmp_path):
  model = models.build("bit_r50x1", num_classes=5, stage_sizes=(2, 1))
  images = images_of((1, 32, 32, 3))
  variables = random_variables(model, images, scale=0.1)
  path = str(tmp_path / "bit.safetensors")
  safetensors.numpy.save_file(torch_bit_state(variables["params"]), path)
  restored, _ = transfer.load_variables(path, variables)
  np.testing.assert_allclose(evaluate(model, restored, images), evaluate(model, variables, images), atol=1e-4)


def test_pretrained_replaces_the_head_for_a_new_task(resnet18, tmp_path):
  model, variables, _ = resnet18
  path = str(tmp_path / "model.safetensors")
  safetensors.numpy.save_file(torch_resnet_state(variables), path)
  target = random_variables(models.build("resnet18", num_classes=3), images_of((1, 32, 32, 3)), seed=5)
  loaded = flat(transfer.load_pretrained(path, target["params"], head_bias_init=-2.0))
  assert not loaded["head/kernel"].any() and loaded["head/kernel"].shape == (512, 3)
  np.testing.assert_array_equal(loaded["head/bias"], np.full(3, -2.0, np.float32))
  np.testing.assert_array_equal(
    loaded["layer4/block1/conv2/kernel"], flat(variables["params"])["layer4/block1/conv2/kernel"]
  )


def test_keys_the_model_has_no_place_for_are_named(resnet18, tmp_path):
  _, variables, _ = resnet18
  path = str(tmp_path / "extra.safetensors")
  safetensors.numpy.save_file({**torch_resnet_state(variables), "layer4.1.se.fc.weight": np.zeros((1, 1, 1, 1))}, path)
  with pytest.raises(ValueError, match=r"layer4\.1\.se\.fc\.weight \(1, 1, 1, 1\) is in the checkpoint but not"):
    transfer.load_variables(path, variables)


def test_missing_keys_are_named(resnet18, tmp_path):
  _, variables, _ = resnet18
  state = torch_resnet_state(variables)
  del state["layer3.1.bn2.running_var"]
  path = str(tmp_path / "missing.safetensors")
  safetensors.numpy.save_file(state, path)
  with pytest.raises(ValueError, match=r"has no 'layer3.1.bn2.running_var', which the resnet layout needs"):
    transfer.load_variables(path, variables)


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".pt"])
def test_pickled_files_are_never_opened(tmp_path, suffix):
  path = tmp_path / f"model{suffix}"
  path.write_bytes(b"\x80\x04 would run code")
  with pytest.raises(ValueError, match="pickled PyTorch checkpoint.*safetensors.torch.save_file"):
    transfer.load_pretrained(str(path), {})


def test_unknown_layout_and_damaged_files_fail_clearly(tmp_path):
  unknown = str(tmp_path / "unknown.safetensors")
  safetensors.numpy.save_file({"encoder.w": np.zeros((2, 2), np.float32)}, unknown)
  with pytest.raises(ValueError, match="no state-dict layout known here .*encoder.w"):
    transfer.load_pretrained(unknown, {})
  damaged = tmp_path / "damaged.safetensors"
  damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
  with pytest.raises(ValueError, match="not a readable .safetensors file"):
    transfer.load_pretrained(str(damaged), {})
