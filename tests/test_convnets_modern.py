"""Tests of EfficientNet, MobileNetV2/V3 and ConvNeXt: exact parameter counts, independent numpy forward passes,
timm-layout `.safetensors` files, stochastic depth and BatchNorm statistics."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from scipy.special import erf

from tests.support import (
  abstract_variables,
  evaluate,
  flat,
  images_of,
  np_batch_norm,
  np_conv,
  np_layer_norm,
  random_variables,
  relu,
  to_numpy,
)
from vitjax import models, transfer
from vitjax.models import layers

# Shrunken variants from module arguments: every block kind, with and without skip, SE and stride.
TINY = {
  "efficientnet_b0": dict(
    arch=(("ds_r1_k3_s1_e1_c16_se0.25",), ("ir_r2_k5_s2_e6_c24_se0.25",)), width_multiplier=0.5, head_features=64
  ),
  "mobilenet_v2": dict(arch=(("ds_r1_k3_s1_c16",), ("ir_r2_k3_s2_e6_c24",)), width_multiplier=0.5, head_features=48),
  "mobilenet_v3_large": dict(
    arch=(
      ("ds_r1_k3_s2_e1_c16_se0.25_nre",),
      ("ir_r1_k5_s2_e4_c24_se0.25", "ir_r1_k3_s1_e3_c24_nre"),
      ("cn_r1_k1_s1_c48",),
    ),
    head_features=64,
  ),
  "convnext_tiny": dict(depths=(1, 2), dims=(8, 16)),
}


def tiny(name, **overrides):
  return models.build(name, num_classes=5, **{**TINY[name], **overrides})


# ---------------------------------------------------------------------------------------------------------------
# Independent numpy references (float64).


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


def silu(x):
  return x * sigmoid(x)


def relu6(x):
  return np.clip(x, 0, 6)


def hard_sigmoid(x):
  return relu6(x + 3) / 6


def hard_swish(x):
  return x * hard_sigmoid(x)


def gelu(x):
  return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def np_depthwise(x, w, *, stride):
  """Per-channel convolution, torch padding (k - 1) // 2: out[n,i,j,c] = sum xpad[n,i*s+a,j*s+b,c] * w[a,b,0,c]."""
  k, p = w.shape[0], (w.shape[0] - 1) // 2
  x = np.pad(x, [(0, 0), (p, p), (p, p), (0, 0)])
  ho, wo = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
  return sum(
    x[:, a : a + stride * (ho - 1) + 1 : stride, b : b + stride * (wo - 1) + 1 : stride] * w[a, b, 0]
    for a in range(k)
    for b in range(k)
  )


def pointwise(x, p):
  return x @ p["kernel"][0, 0] + p.get("bias", 0.0)


def np_se(x, p, act, gate):
  s = act(pointwise(x.mean(axis=(1, 2), keepdims=True), p["conv_reduce"]))
  return x * gate(pointwise(s, p["conv_expand"]))


def np_mobile_block(x, p, s, *, stride, act, se=None):
  """timm's depthwise-separable block (no `bn3`) or inverted residual; the skip wherever the shape stays."""
  bn = lambda y, name: np_batch_norm(y, p[name], s[name])  # noqa: E731
  inverted = "bn3" in p
  y = act(bn(pointwise(x, p["conv_pw"]), "bn1")) if inverted else x
  y = act(bn(np_depthwise(y, p["conv_dw"]["kernel"], stride=stride), "bn2" if inverted else "bn1"))
  if se:
    y = np_se(y, p["se"], *se)
  y = bn(pointwise(y, p["conv_pwl" if inverted else "conv_pw"]), "bn3" if inverted else "bn2")
  return y + x if y.shape == x.shape else y


def np_efficientnet(images, p, s, *, act, se):
  """Stem, a DS block, two stride-2 then stride-1 MBConv blocks, conv_head + bn2, pool, head (the TINY arch)."""
  x = act(np_batch_norm(np_conv(images, p["conv_stem"]["kernel"], stride=2, padding=(1, 1)), p["bn1"], s["bn1"]))
  for name, stride in (("blocks_0_0", 1), ("blocks_1_0", 2), ("blocks_1_1", 1)):
    x = np_mobile_block(x, p[name], s[name], stride=stride, act=act, se=se)
  x = act(np_batch_norm(pointwise(x, p["conv_head"]), p["bn2"], s["bn2"]))
  return x.mean(axis=(1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]


def np_mobilenet_v3(images, p, s):
  x = hard_swish(np_batch_norm(np_conv(images, p["conv_stem"]["kernel"], stride=2, padding=(1, 1)), p["bn1"], s["bn1"]))
  se = (relu, hard_sigmoid)
  x = np_mobile_block(x, p["blocks_0_0"], s["blocks_0_0"], stride=2, act=relu, se=se)
  x = np_mobile_block(x, p["blocks_1_0"], s["blocks_1_0"], stride=2, act=hard_swish, se=se)
  x = np_mobile_block(x, p["blocks_1_1"], s["blocks_1_1"], stride=1, act=relu)
  b, bs = p["blocks_2_0"], s["blocks_2_0"]
  x = hard_swish(np_batch_norm(pointwise(x, b["conv"]), b["bn1"], bs["bn1"]))
  x = hard_swish(pointwise(x.mean(axis=(1, 2), keepdims=True), p["conv_head"]))[:, 0, 0]
  return x @ p["head"]["kernel"] + p["head"]["bias"]


def np_convnext(images, p):
  x = np_conv(images, p["stem_conv"]["kernel"], stride=4, padding=(0, 0)) + p["stem_conv"]["bias"]
  x = np_layer_norm(x, p["stem_norm"])
  for i in range(2):
    stage = p[f"stages_{i}"]
    if i:
      x = np_layer_norm(x, stage["downsample_norm"])
      x = np_conv(x, stage["downsample_conv"]["kernel"], stride=2, padding=(0, 0)) + stage["downsample_conv"]["bias"]
    for j in range(i + 1):
      b = stage[f"blocks_{j}"]
      y = np_layer_norm(np_depthwise(x, b["conv_dw"]["kernel"], stride=1) + b["conv_dw"]["bias"], b["norm"])
      y = gelu(y @ b["mlp_fc1"]["kernel"] + b["mlp_fc1"]["bias"]) @ b["mlp_fc2"]["kernel"] + b["mlp_fc2"]["bias"]
      x = x + b["gamma"] * y
  return np_layer_norm(x.mean(axis=(1, 2)), p["head_norm"]) @ p["head"]["kernel"] + p["head"]["bias"]


REFERENCES = {
  "efficientnet_b0": lambda x, p, s: np_efficientnet(x, p, s, act=silu, se=(silu, sigmoid)),
  "mobilenet_v2": lambda x, p, s: np_efficientnet(x, p, s, act=relu6, se=None),
  "mobilenet_v3_large": np_mobilenet_v3,
  "convnext_tiny": lambda x, p, s: np_convnext(x, p),
}


@pytest.fixture(scope="module", params=sorted(TINY))
def family(request):
  """(name, model, random variables with non-trivial BatchNorm statistics, images, logits) of a tiny variant."""
  name = request.param
  model = tiny(name)
  images = images_of((2, 29, 29, 3) if name != "convnext_tiny" else (2, 32, 32, 3))
  variables = random_variables(model, images)
  if "batch_stats" in variables:
    rng = np.random.default_rng(5)
    stats = jax.tree.map(lambda a: a + 0.5 * rng.uniform(size=a.shape).astype(np.float32), variables["batch_stats"])
    variables = {**variables, "batch_stats": stats}
  return name, model, variables, images, np.asarray(evaluate(model, variables, images))


def test_matches_numpy_reference(family):
  # Odd sizes (29 -> 15 -> 8 -> 4) exercise the symmetric padding of strided convolutions.
  name, _, variables, images, logits = family
  reference = REFERENCES[name](
    np.asarray(images, np.float64), to_numpy(variables["params"]), to_numpy(variables.get("batch_stats", {}))
  )
  assert np.abs(reference).max() > 0.1
  np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-5)


def test_squeeze_excitation_widths():
  # EfficientNet: a quarter of the block's input channels, rounded; MobileNetV3: a quarter of the expanded
  # channels, rounded to a multiple of 8.
  eff = flat(abstract_variables(tiny("efficientnet_b0"), jnp.zeros((1, 32, 32, 3)))["params"])
  assert eff["blocks_1_0/se/conv_reduce/kernel"].shape == (1, 1, 48, 2)  # input 8, expanded 48
  assert eff["blocks_1_1/se/conv_reduce/kernel"].shape == (1, 1, 96, 4)  # input 16, expanded 96
  assert eff["conv_head/kernel"].shape == (1, 1, 16, 32)  # width 0.5: 64 -> 32
  v3 = flat(abstract_variables(tiny("mobilenet_v3_large"), jnp.zeros((1, 32, 32, 3)))["params"])
  assert v3["blocks_0_0/se/conv_reduce/kernel"].shape == (1, 1, 16, 8)
  assert v3["blocks_1_0/se/conv_reduce/kernel"].shape == (1, 1, 64, 16)
  v2 = flat(abstract_variables(tiny("mobilenet_v2"), jnp.zeros((1, 32, 32, 3)))["params"])
  assert v2["conv_head/kernel"].shape == (1, 1, 16, 48)  # MobileNetV2's head never narrows below head_features


# ---------------------------------------------------------------------------------------------------------------
# timm's state-dict layout.


def torch_module(name: str, flax_module: str) -> str:
  """timm's module name for one of this project's module paths (the reverse of the converters)."""
  if name == "convnext_tiny":
    for pattern, replacement in (
      (r"^stem_conv$", "stem.0"),
      (r"^stem_norm$", "stem.1"),
      (r"^(stages)_(\d+)/downsample_norm$", r"\1.\2.downsample.0"),
      (r"^(stages)_(\d+)/downsample_conv$", r"\1.\2.downsample.1"),
      (r"^head_norm$", "head.norm"),
      (r"^head$", "head.fc"),
      (r"/mlp_", "/mlp."),
      (r"^stages_(\d+)/blocks_(\d+)", r"stages.\1.blocks.\2"),
    ):
      flax_module = re.sub(pattern, replacement, flax_module)
    return flax_module.replace("/", ".")
  return re.sub(r"^head$", "classifier", re.sub(r"^blocks_(\d+)_(\d+)", r"blocks.\1.\2", flax_module)).replace("/", ".")


def to_timm_state(name: str, variables) -> dict[str, np.ndarray]:
  """The variables as timm's state dict: OIHW convolutions, (out, in) Linears, BatchNorm buffers."""
  torch_leaf = {"scale": "weight", "bias": "bias", "gamma": "gamma", "mean": "running_mean", "var": "running_var"}
  state = {}
  for collection in ("params", "batch_stats"):
    for key, value in flat(variables.get(collection, {})).items():
      module, leaf = key.rsplit("/", 1)
      target = torch_module(name, module)
      value = np.asarray(value)
      if leaf == "kernel":
        state[f"{target}.weight"] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      else:
        state[f"{target}.{torch_leaf[leaf]}"] = value
      if leaf == "mean":
        state[f"{target}.num_batches_tracked"] = np.array(3, np.int64)
  return {k: np.ascontiguousarray(v) for k, v in state.items()}


def test_timm_safetensors_loads_with_same_logits(family, tmp_path):
  name, model, variables, images, logits = family
  path = str(tmp_path / f"{name}.safetensors")
  safetensors.numpy.save_file(to_timm_state(name, variables), path)
  restored, _ = transfer.load_variables(path, abstract_variables(model, images))
  np.testing.assert_allclose(evaluate(model, restored, images), logits, rtol=1e-6, atol=1e-6)


def test_timm_state_with_unknown_key_is_refused(tmp_path):
  name, model = "mobilenet_v3_large", tiny("mobilenet_v3_large")
  images = jnp.zeros((1, 32, 32, 3))
  state = to_timm_state(name, random_variables(model, images))
  state["blocks.0.0.extra.weight"] = np.zeros((3,), np.float32)
  path = str(tmp_path / "extra.safetensors")
  safetensors.numpy.save_file(state, path)
  with pytest.raises(ValueError, match="blocks.0.0.extra"):
    transfer.load_variables(path, abstract_variables(model, images))


# ---------------------------------------------------------------------------------------------------------------
# Shapes, stochastic depth, BatchNorm statistics.


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("size", [32, 45, 64])
def test_output_shapes_at_several_resolutions(name, size):
  model = tiny(name)
  images = jax.ShapeDtypeStruct((3, size, size, 3), jnp.float32)
  variables = abstract_variables(model, images)
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  assert logits.shape == (3, 5)


@pytest.mark.parametrize("name", sorted(TINY))
def test_pre_logits_are_sown_and_headless_model_returns_them(name):
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  model = tiny(name)
  _, state = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False, mutable=True), images)
  headless = models.build(name, num_classes=0, **TINY[name])
  features = jax.eval_shape(lambda x: headless.init_with_output(jax.random.key(0), x, train=False)[0], images)
  assert (
    state["intermediates"]["pre_logits"][0].shape == features.shape == (2, state["params"]["head"]["kernel"].shape[0])
  )


def drop_path_rates(model) -> list[float]:
  """The rate of every stochastic-depth layer the model applies, in order."""
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, layers.DropPath):
      rates.append(context.module.rate)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), jnp.zeros((1, 32, 32, 3)))
  return rates


def test_stochastic_depth_rises_linearly_over_blocks_as_timm():
  # EfficientNet: block k of 16 at 0.2 * k / 16, applied on the blocks with a residual (timm's builder).
  residual_blocks = [2, 4, 6, 7, 9, 10, 12, 13, 14]
  efficientnet = models.build("efficientnet_b0", num_classes=10)
  np.testing.assert_allclose(drop_path_rates(efficientnet), [0.2 * k / 16 for k in residual_blocks])
  # ConvNeXt: linspace(0, rate, blocks) (timm's calculate_drop_path_rates); the paper's 0.1 for ConvNeXt-T.
  np.testing.assert_allclose(drop_path_rates(models.build("convnext_tiny", num_classes=10)), np.linspace(0, 0.1, 18))


def train_logits(model, variables, images, seed):
  """Train-mode logits for a dropout key (BatchNorm on batch statistics)."""
  return model.apply(variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(seed)})[0]


@pytest.mark.parametrize("name", ["efficientnet_b0", "convnext_tiny"])
def test_stochastic_depth_rate_zero_is_identity(name):
  images = images_of((8, 32, 32, 3))  # 8 examples: two keys dropping the same branches is unlikely (< 1e-3)
  model = tiny(name, stochastic_depth=0.0, dropout_rate=0.0)
  variables = random_variables(model, images)
  run = jax.jit(train_logits, static_argnums=0)
  np.testing.assert_array_equal(run(model, variables, images, 0), run(model, variables, images, 1))
  if name == "convnext_tiny":  # without BatchNorm, training mode at rate 0 is evaluation
    np.testing.assert_allclose(run(model, variables, images, 0), evaluate(model, variables, images), rtol=1e-6)
  dropping = tiny(name, stochastic_depth=0.9, dropout_rate=0.0)
  assert not np.allclose(run(dropping, variables, images, 0), run(dropping, variables, images, 1))


def test_batch_stats_update_in_train_mode_only():
  model = tiny("mobilenet_v3_large", dropout_rate=0.0)
  images = images_of((4, 32, 32, 3))
  variables = random_variables(model, images)

  @jax.jit
  def apply(v, x):
    capture = lambda module, _: module.name == "conv_stem"  # noqa: E731
    _, train_state = model.apply(
      v, x, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=capture
    )
    _, eval_state = model.apply(v, x, train=False, mutable=["batch_stats"])
    return train_state, eval_state

  train_state, eval_state = apply(variables, images)
  before, after_train = flat(variables["batch_stats"]), flat(train_state["batch_stats"])
  after_eval = flat(eval_state["batch_stats"])
  assert all(np.array_equal(before[k], after_eval[k]) for k in before)
  assert all(not np.array_equal(before[k], after_train[k]) for k in before)
  stem_out = train_state["intermediates"]["conv_stem"]["__call__"][0]
  np.testing.assert_allclose(after_train["bn1/mean"], 0.1 * stem_out.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-7)
