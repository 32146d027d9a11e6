"""Tests of AlexNet, VGG, DenseNet and the CIFAR ResNets: exact parameter counts, numpy reference forward passes
written against the torch state-dict layout, and those state dicts loaded from `.safetensors` files."""

import functools
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from tests.support import np_conv, relu
from vitjax import models, transfer
from vitjax.models import alexnet, registry

# He et al. 2016 table 6: the CIFAR ResNets' counts with 10 classes (option A), as the paper rounds them; the exact
# counts are registered in models/cifar_resnet.py.
PAPER_CIFAR_PARAMS = {"resnet20": 270_000, "resnet32": 460_000, "resnet44": 660_000, "resnet56": 850_000}
PAPER_CIFAR_PARAMS["resnet110"] = 1_700_000
# Option B adds two 1x1 projections with BatchNorm: 16 * 32 + 64 + 32 * 64 + 128.
PROJECTION_EXTRA = 2_752

TINY_ALEXNET = dict(widths=(4, 6, 8, 8, 8), mlp_features=16)
TINY_VGG = dict(stages=((4,), (6, 6)), mlp_features=8)
TINY_DENSENET = dict(growth_rate=4, block_config=(1, 2), bn_size=2)
TINY_CIFAR = dict(width=4, stage_sizes=(1, 1, 1))


@functools.cache
def abstract_variables(model, shape):
  """The model's variables as shapes (nothing computed); cached, as every tree is traced several times."""
  return jax.eval_shape(
    lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False), jax.ShapeDtypeStruct(shape, jnp.float32)
  )


def count_params(name, image_size, **overrides):
  model = models.build(name, num_classes=1000 if image_size == 224 else 10, **overrides)
  variables = abstract_variables(model, (1, image_size, image_size, 3))
  return sum(math.prod(p.shape) for p in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name", sorted(PAPER_CIFAR_PARAMS))
def test_cifar_resnet_counts_round_to_the_papers(name):
  registered = registry.entry(name)
  assert registered.params_at == (32, 10) and count_params(name, 32) == registered.params
  assert round(registered.params, -4 if name != "resnet110" else -5) == PAPER_CIFAR_PARAMS[name]


def test_cifar_projection_shortcuts_add_two_projections():
  expected = registry.entry("resnet20").params + PROJECTION_EXTRA
  assert count_params("resnet20", 32, shortcut="projection") == 272_474 == expected


def test_bad_shortcut_names_the_choices():
  with pytest.raises(ValueError, match="shortcut='option_b'.*zero_pad, projection"):
    models.build("resnet20", num_classes=10, shortcut="option_b")


# ---------------------------------------------------------------------------------------------------------------
# Random weights in the model's tree, and the same weights as a torch state dict.


def random_variables(model, shape, seed=0):
  """Kernels He-scaled over fan-in (deep stacks stay O(1)), random biases, BatchNorm scales and statistics."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return rng.standard_normal(leaf.shape) * np.sqrt(2.0 / math.prod(leaf.shape[:-1]))
    if name == "var":
      return rng.uniform(0.5, 1.5, leaf.shape)
    return (1.0 if name == "scale" else 0.0) + 0.2 * rng.standard_normal(leaf.shape)

  abstract = flax.core.unfreeze(abstract_variables(model, shape))
  return jax.tree.map(lambda a: a.astype(np.float32), jax.tree_util.tree_map_with_path(fill, abstract))


def torch_state(variables, module_name):
  """The torch state dict of `variables`: `module_name` maps a Flax module path to the torch module's name."""
  state = {}
  for path, value in flax.traverse_util.flatten_dict(variables).items():
    collection, *module, leaf = path
    name = module_name("/".join(module))
    value = np.asarray(value)
    if leaf == "kernel":
      state[f"{name}.weight"] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    elif collection == "batch_stats":
      state[f"{name}.running_{leaf}"] = value
      state[f"{name}.num_batches_tracked"] = np.array(7, np.int64)
    else:
      state[f"{name}.{'weight' if leaf == 'scale' else 'bias'}"] = value
  return state


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, variables, images):
  return model.apply(variables, images, train=False)


def logits(model, variables, images):
  """Inference logits; one compilation per model and input shape."""
  return np.asarray(_forward(model, variables, images))


def check_loads(tmp_path, model, state, images, expected):
  """`state` written as a .safetensors file loads through `transfer.load_variables` and gives `expected`."""
  path = str(tmp_path / "model.safetensors")
  # Contiguous copies: safetensors writes an array's buffer as is, a transposed view's included.
  safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path)
  loaded, _ = transfer.load_variables(path, abstract_variables(model, tuple(images.shape)))
  np.testing.assert_allclose(logits(model, loaded, images), expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Numpy references on torch state dicts (NCHW weights, NHWC activations).


def t_conv(x, s, name, *, stride=1, pad=0):
  y = np_conv(x, s[f"{name}.weight"].transpose(2, 3, 1, 0), stride=stride, padding=(pad, pad))
  return y + s[f"{name}.bias"] if f"{name}.bias" in s else y


def t_bn(x, s, name):
  return (x - s[f"{name}.running_mean"]) / np.sqrt(s[f"{name}.running_var"] + 1e-5) * s[f"{name}.weight"] + s[
    f"{name}.bias"
  ]


def t_linear(x, s, name):
  return x @ s[f"{name}.weight"].T + s[f"{name}.bias"]


def np_pool(x, k, stride, *, pad=0, reduce=np.max):
  x = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)], constant_values=-np.inf if reduce is np.max else 0.0)
  ho, wo = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
  windows = [
    x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
    for i in range(k)
    for j in range(k)
  ]
  return reduce(windows, axis=0)


def np_adaptive_avg_pool(x, out_h, out_w):
  """torch's definition, bin by bin: bin i of n inputs into m covers [floor(i n / m), ceil((i + 1) n / m))."""
  h, w = x.shape[1:3]
  out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
  for i in range(out_h):
    for j in range(out_w):
      rows = slice(math.floor(i * h / out_h), math.ceil((i + 1) * h / out_h))
      cols = slice(math.floor(j * w / out_w), math.ceil((j + 1) * w / out_w))
      out[:, i, j] = x[:, rows, cols].mean(axis=(1, 2))
  return out


def np_alexnet(x, s):
  x = np_pool(relu(t_conv(x, s, "features.0", stride=4, pad=2)), 3, 2)
  x = np_pool(relu(t_conv(x, s, "features.3", pad=2)), 3, 2)
  for i in (6, 8, 10):
    x = relu(t_conv(x, s, f"features.{i}", pad=1))
  x = np_adaptive_avg_pool(np_pool(x, 3, 2), 6, 6)
  x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # torch flattens (c, h, w)
  x = relu(t_linear(relu(t_linear(x, s, "classifier.1")), s, "classifier.4"))
  return t_linear(x, s, "classifier.6")


def np_vgg(x, s, stages, *, bn):
  index = 0
  for stage in stages:
    for _ in stage:
      x = t_conv(x, s, f"features.{index}", pad=1)
      x = relu(t_bn(x, s, f"features.{index + 1}") if bn else x)
      index += 3 if bn else 2
    x, index = np_pool(x, 2, 2), index + 1
  if min(x.shape[1:3]) < 7:
    x = np_adaptive_avg_pool(x, max(7, x.shape[1]), max(7, x.shape[2]))
  x = relu(t_conv(relu(t_conv(x, s, "pre_logits.fc1")), s, "pre_logits.fc2"))
  return t_linear(x.mean(axis=(1, 2)), s, "head.fc")


def np_densenet(x, s, block_config):
  x = relu(t_bn(t_conv(x, s, "features.conv0", stride=2, pad=3), s, "features.norm0"))
  x = np_pool(x, 3, 2, pad=1)
  for b, num_layers in enumerate(block_config, 1):
    for j in range(1, num_layers + 1):
      layer = f"features.denseblock{b}.denselayer{j}"
      y = t_conv(relu(t_bn(x, s, f"{layer}.norm1")), s, f"{layer}.conv1")
      y = t_conv(relu(t_bn(y, s, f"{layer}.norm2")), s, f"{layer}.conv2", pad=1)
      x = np.concatenate([x, y], axis=-1)
    if b < len(block_config):
      x = t_conv(relu(t_bn(x, s, f"features.transition{b}.norm")), s, f"features.transition{b}.conv")
      x = np_pool(x, 2, 2, reduce=np.mean)
  x = relu(t_bn(x, s, "features.norm5"))
  return t_linear(x.mean(axis=(1, 2)), s, "classifier")


def np_cifar_resnet(x, s, *, projection):
  x = relu(t_bn(t_conv(x, s, "conv1", pad=1), s, "bn1"))
  for i in (1, 2, 3):
    b, stride = f"layer{i}.0", 1 if i == 1 else 2
    y = relu(t_bn(t_conv(x, s, f"{b}.conv1", stride=stride, pad=1), s, f"{b}.bn1"))
    y = t_bn(t_conv(y, s, f"{b}.conv2", pad=1), s, f"{b}.bn2")
    if i == 1:
      shortcut = x
    elif projection:
      shortcut = t_bn(t_conv(x, s, f"{b}.downsample.0", stride=2), s, f"{b}.downsample.1")
    else:  # Option A: the input's channels in the middle of the doubled width.
      quarter = y.shape[-1] // 4
      shortcut = np.pad(x[:, ::2, ::2], [(0, 0), (0, 0), (0, 0), (quarter, quarter)])
    x = relu(y + shortcut)
  return t_linear(x.mean(axis=(1, 2)), s, "fc")


# ---------------------------------------------------------------------------------------------------------------
# Each family against its reference, from the model's tree and from a .safetensors file.


def check_family(tmp_path, model, shape, to_torch, reference):
  """The model's logits equal the numpy reference's on its torch state dict, and so do those of that state dict
  loaded from a .safetensors file; returns the state dict, images and reference logits."""
  images = jax.random.uniform(jax.random.key(1), shape, jnp.float32, -1.0, 1.0)
  variables = random_variables(model, shape)
  state = to_torch(variables)
  expected = reference(np.asarray(images, np.float64), state)
  assert np.abs(expected).max() > 0.1  # a meaningful comparison, not zeros against zeros
  np.testing.assert_allclose(logits(model, variables, images), expected, rtol=1e-4, atol=1e-4)
  check_loads(tmp_path, model, state, images, expected)
  return state, images, expected


def alexnet_state(variables):
  state = torch_state(variables, lambda path: {"head": "classifier.6"}.get(path, path.replace("_", ".")))
  # The Flax kernel reads the pooled 6 x 6 map flattened as (h, w, c), torch's weight as (c, h, w).
  weight = state["classifier.1.weight"]
  state["classifier.1.weight"] = weight.reshape(len(weight), 6, 6, -1).transpose(0, 3, 1, 2).reshape(len(weight), -1)
  return state


def test_alexnet_matches_reference_and_loads_torchvision_layout(tmp_path):
  model = models.build("alexnet", num_classes=5, **TINY_ALEXNET)
  # 287 x 263 pixels end as 8 x 7 maps, which the adaptive pool averages in overlapping 6 x 6 bins.
  state, _, _ = check_family(tmp_path, model, (2, 287, 263, 3), alexnet_state, np_alexnet)
  assert state["classifier.1.weight"].shape == (16, 8 * 6 * 6)


def vgg_name(path):
  return {"conv_mlp/fc1": "pre_logits.fc1", "conv_mlp/fc2": "pre_logits.fc2", "head": "head.fc"}.get(
    path, path.replace("_", ".")
  )


def torchvision_vgg(state):
  """timm's VGG state dict as torchvision's: the ConvMlp convolutions as flattened Linear layers."""
  out = {k: v for k, v in state.items() if not k.startswith(("pre_logits.", "head."))}
  for timm_name, torchvision_name in [("pre_logits.fc1", "classifier.0"), ("pre_logits.fc2", "classifier.3")]:
    weight = state[f"{timm_name}.weight"]
    out[f"{torchvision_name}.weight"] = weight.reshape(len(weight), -1)
    out[f"{torchvision_name}.bias"] = state[f"{timm_name}.bias"]
  out["classifier.6.weight"], out["classifier.6.bias"] = state["head.fc.weight"], state["head.fc.bias"]
  return out


@pytest.mark.parametrize("bn", [False, True])
def test_vgg_matches_reference_and_loads_timm_and_torchvision_layouts(tmp_path, bn):
  model = models.build("vgg11_bn" if bn else "vgg11", num_classes=5, **TINY_VGG)
  reference = lambda x, s: np_vgg(x, s, TINY_VGG["stages"], bn=bn)  # noqa: E731
  # 58 x 74 pixels: 14 x 18 maps into the 7 x 7 fc1, 1 x 3 windows pooled.
  state, images, expected = check_family(tmp_path, model, (2, 58, 74, 3), lambda v: torch_state(v, vgg_name), reference)
  check_loads(tmp_path, model, torchvision_vgg(state), images, expected)


def test_vgg_below_7x7_pools_up_as_timm():
  # 20 x 24 pixels leave 5 x 6 maps: adaptive pooling brings them to 7 x 7 before fc1.
  model = models.build("vgg11", num_classes=5, **TINY_VGG)
  shape = (2, 20, 24, 3)
  images = jax.random.uniform(jax.random.key(1), shape, jnp.float32, -1.0, 1.0)
  variables = random_variables(model, shape)
  expected = np_vgg(np.asarray(images, np.float64), torch_state(variables, vgg_name), TINY_VGG["stages"], bn=False)
  np.testing.assert_allclose(logits(model, variables, images), expected, rtol=1e-4, atol=1e-4)


def densenet_name(path):
  return "classifier" if path == "head" else "features." + path.replace("/", ".")


def test_densenet_matches_reference_and_loads_timm_layout(tmp_path):
  model = models.build("densenet121", num_classes=5, **TINY_DENSENET)
  reference = lambda x, s: np_densenet(x, s, TINY_DENSENET["block_config"])  # noqa: E731
  # 35 pixels: 18 after the stem, 9 after the pool, 4 after the transition's floor-mode pooling.
  state, images, expected = check_family(
    tmp_path, model, (2, 35, 35, 3), lambda v: torch_state(v, densenet_name), reference
  )
  # Old torchvision files name dense-layer modules `norm.1`, `conv.2`, ...
  old = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in state.items()}
  assert "features.denseblock2.denselayer2.norm.1.weight" in old
  check_loads(tmp_path, model, old, images, expected)


def cifar_name(path):
  path = path.replace("/block", ".").replace("downsample_conv", "downsample.0").replace("downsample_bn", "downsample.1")
  return {"head": "fc"}.get(path, path.replace("/", "."))


@pytest.mark.parametrize("shortcut", ["zero_pad", "projection"])
def test_cifar_resnet_matches_reference_and_loads_resnet_layout(tmp_path, shortcut):
  model = models.build("resnet20", num_classes=5, shortcut=shortcut, **TINY_CIFAR)
  reference = lambda x, s: np_cifar_resnet(x, s, projection=shortcut == "projection")  # noqa: E731
  # 11 pixels: the strided shortcut and the strided padded conv both give 6, then 3.
  state, _, _ = check_family(tmp_path, model, (2, 11, 11, 3), lambda v: torch_state(v, cifar_name), reference)
  assert ("layer2.0.downsample.0.weight" in state) == (shortcut == "projection")


def test_adaptive_avg_pool_facts():
  x = np.random.default_rng(0).standard_normal((2, 12, 8, 3)).astype(np.float32)
  # Dividing sizes: plain average pooling; a larger output repeats; otherwise torch's overlapping bins.
  blocks = x.reshape(2, 6, 2, 4, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(alexnet.adaptive_avg_pool(jnp.asarray(x), (6, 4)), blocks, rtol=1e-6, atol=1e-6)
  one = x[:, :1, :1]
  np.testing.assert_allclose(alexnet.adaptive_avg_pool(jnp.asarray(one), (6, 6)), np.tile(one, (1, 6, 6, 1)))
  np.testing.assert_allclose(
    alexnet.adaptive_avg_pool(jnp.asarray(x), (5, 3)), np_adaptive_avg_pool(x, 5, 3), atol=1e-6
  )


# ---------------------------------------------------------------------------------------------------------------
# Input sizes, features and training mode.


def output_shapes(model, variables, shape, capture=()):
  """Shapes of the logits and of the sown or captured intermediates, traced only."""
  return jax.eval_shape(
    lambda v, x: model.apply(
      v, x, train=False, mutable="intermediates", capture_intermediates=lambda m, _: m.name in capture
    ),
    variables,
    jax.ShapeDtypeStruct(shape, jnp.float32),
  )


@pytest.mark.parametrize(
  "name, overrides, sizes, width",
  [
    ("alexnet", {}, [(63, 63), (224, 224), (256, 320)], 4096),
    ("vgg16", {}, [(32, 32), (224, 224), (200, 300)], 4096),
    ("vgg11_bn", TINY_VGG, [(8, 8), (33, 47), (64, 64)], 8),
    ("densenet121", TINY_DENSENET, [(16, 16), (35, 35), (64, 48)], 14),  # 8 + 4, halved, + 2 * 4
    ("resnet20", {}, [(8, 8), (32, 32), (45, 64)], 64),
  ],
)
def test_any_input_size_gives_logits_from_the_same_weights(name, overrides, sizes, width):
  # AlexNet and VGG pool adaptively: weights made at 224 serve every size.
  model = models.build(name, num_classes=7, **overrides)
  variables = abstract_variables(model, (1, 224, 224, 3))
  for height, width_px in sizes:
    logits_shape, state = output_shapes(model, variables, (2, height, width_px, 3))
    assert logits_shape.shape == (2, 7) and logits_shape.dtype == jnp.float32
    assert state["intermediates"]["pre_logits"][0].shape == (2, width)


def test_vgg_conv_mlp_sees_7x7_windows_and_alexnet_a_6x6_map():
  vgg = models.build("vgg11", num_classes=7)
  variables = abstract_variables(vgg, (1, 224, 224, 3))
  for size, grid in [(224, 1), (448, 8), (64, 1)]:  # 7x7 maps, 14x14 maps, 2x2 maps pooled up to 7x7
    _, state = output_shapes(vgg, variables, (1, size, size, 3), capture=("fc1",))
    assert state["intermediates"]["conv_mlp"]["fc1"]["__call__"][0].shape == (1, grid, grid, 4096)
  alex = models.build("alexnet", num_classes=7)
  variables = abstract_variables(alex, (1, 224, 224, 3))
  for size, side in [(224, 13), (63, 3), (320, 19)]:  # 224: 55 -> 27 -> 27 -> 13 -> 13 -> 6 (adaptive: 6)
    _, state = output_shapes(alex, variables, (1, size, size, 3), capture=("features_10",))
    assert state["intermediates"]["features_10"]["__call__"][0].shape == (1, side, side, 256)
  assert variables["params"]["classifier_1"]["kernel"].shape == (6 * 6 * 256, 4096)


def test_no_head_returns_pre_logits():
  for name, overrides in [("alexnet", TINY_ALEXNET), ("vgg11", TINY_VGG), ("densenet121", TINY_DENSENET)]:
    model = models.build(name, num_classes=0, **overrides)
    variables = abstract_variables(model, (1, 64, 64, 3))
    assert "head" not in variables["params"]
    assert output_shapes(model, variables, (2, 64, 64, 3))[0].ndim == 2


def test_vgg_bn_train_mode_updates_batch_stats_with_torch_momentum():
  model, conv, norm = models.build("vgg11_bn", num_classes=5, **TINY_VGG), "features_0", "features_1"
  shape = (4, 32, 32, 3)
  images = jax.random.uniform(jax.random.key(2), shape, jnp.float32, -1.0, 1.0)
  variables = random_variables(model, shape)
  train = jax.jit(
    lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=lambda m, _: m.name == conv
    )
  )
  _, state = train(variables, images)
  before, after = (flax.traverse_util.flatten_dict(t, sep="/") for t in (variables, state))
  assert all(not np.array_equal(before[k], after[k]) for k in before if k.startswith("batch_stats/"))
  # torch's momentum 0.1 on the new batch statistics (biased variance here; torch keeps the unbiased one).
  out = np.asarray(state["intermediates"][conv]["__call__"][0], np.float64)
  for stat, batch in [("mean", out.mean(axis=(0, 1, 2))), ("var", out.var(axis=(0, 1, 2)))]:
    expected = 0.9 * before[f"batch_stats/{norm}/{stat}"] + 0.1 * batch
    np.testing.assert_allclose(after[f"batch_stats/{norm}/{stat}"], expected, rtol=1e-4, atol=1e-5)
