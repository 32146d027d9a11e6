"""Tests of vitjax.models: exact parameter counts, shapes, and numerics against independent numpy references."""

import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support import (
  TINY_VIT,
  abstract_variables,
  evaluate,
  fill_random,
  flat,
  images_of,
  np_attention,
  np_batch_norm,
  np_conv,
  np_layer_norm,
  np_mlp,
  random_variables,
  relu,
  same_padding,
  to_numpy,
)
from vitjax import models
from vitjax.models import hybrid, layers, resnet, vit


def count_params(model, *, image_size: int = 224) -> int:
  variables = abstract_variables(model, jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


def init(model, images):
  """The model's own initialisation (rbg keys: threefry init compiles twice as slowly on this CPU)."""
  return jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(images)


# ---------------------------------------------------------------------------------------------------------------
# Registry (counts of every registered name: tests/test_registry.py).


@pytest.mark.parametrize("name, expected", [("vit_b16", 86_566_120), ("vit_s32", 22_878_184)])
def test_gap_classifier_drops_class_token_params(name, expected):
  # vit_jax's "-gap-norep" variants: no `cls` and one position embedding fewer.
  assert count_params(models.build(name, num_classes=1000, classifier="gap")) == expected


def test_vit_b16_tree_has_public_checkpoint_names_and_shapes():
  model = models.build("vit_b16", num_classes=1000)
  variables = abstract_variables(model, jnp.zeros((1, 224, 224, 3)))
  shapes = {k: v.shape for k, v in flat(variables["params"]).items()}
  block = "Transformer/encoderblock_11/"
  assert shapes["embedding/kernel"] == (16, 16, 3, 768)
  assert shapes["cls"] == (1, 1, 768)
  assert shapes["Transformer/posembed_input/pos_embedding"] == (1, 197, 768)
  assert shapes[block + "MultiHeadDotProductAttention_0/query/kernel"] == (768, 12, 64)
  assert shapes[block + "MultiHeadDotProductAttention_0/value/bias"] == (12, 64)
  assert shapes[block + "MultiHeadDotProductAttention_0/out/kernel"] == (12, 64, 768)
  assert shapes[block + "MlpBlock_0/Dense_0/kernel"] == (768, 3072)
  assert shapes[block + "MlpBlock_0/Dense_1/kernel"] == (3072, 768)
  assert shapes[block + "LayerNorm_1/scale"] == (768,)
  assert shapes["Transformer/encoder_norm/bias"] == (768,)
  assert shapes["head/kernel"] == (768, 1000)


def test_hybrid_and_bit_trees_use_public_names():
  images = jnp.zeros((1, 224, 224, 3))
  hybrid = flat(abstract_variables(models.build("r50_vit_b16", num_classes=10), images)["params"])
  assert hybrid["conv_root/kernel"].shape == (7, 7, 3, 64)
  assert hybrid["embedding/kernel"].shape == (1, 1, 1024, 768)
  assert hybrid["Transformer/posembed_input/pos_embedding"].shape == (1, 197, 768)
  assert {"block3/unit9/conv3/kernel", "block3/unit1/conv_proj/kernel", "block1/unit1/gn_proj/scale"} <= set(hybrid)
  bit = flat(abstract_variables(models.build("bit_r50x1", num_classes=10), images)["params"])
  assert bit["root_block/standardized_conv2d/kernel"].shape == (7, 7, 3, 64)
  assert bit["block1/unit01/a/proj/standardized_conv2d/kernel"].shape == (1, 1, 64, 256)
  assert bit["block4/unit03/b/standardized_conv2d/kernel"].shape == (3, 3, 512, 512)
  assert bit["block2/unit04/c/group_norm/scale"].shape == (128,)
  assert bit["head/conv2d/kernel"].shape == (1, 1, 2048, 10)
  assert "group_norm/bias" in bit


def test_unknown_name_lists_choices():
  with pytest.raises(ValueError, match=r"Unknown model 'vit_q16'; choose one of: ") as error:
    models.build("vit_q16", num_classes=10)
  assert {"vit_b16", "resnet50", "vit_micro16"} <= set(str(error.value).split(": ", 1)[1].rstrip(".").split(", "))


def test_unknown_override_raises():
  with pytest.raises(ValueError, match=r"Unknown override\(s\) 'dropout' for model 'vit_b16'; valid: .*dropout_rate"):
    models.build("vit_b16", num_classes=10, dropout=0.1)
  with pytest.raises(ValueError, match=r"'stochastic_depth'"):
    models.build("resnet50", num_classes=10, stochastic_depth=0.1)


def test_any_patch_size_parses():
  model = models.build("vit_s14", num_classes=10, dropout_rate=0.1)
  assert (model.patch_size, model.hidden_size, model.num_layers, model.dropout_rate) == (14, 384, 12, 0.1)
  assert models.build("vit_micro4", num_classes=10).hidden_size == 128


# ---------------------------------------------------------------------------------------------------------------
# Shapes.


@pytest.mark.parametrize("image_size", [16, 32, 48])
def test_vit_output_shape_at_several_sizes(image_size):
  model = models.build("vit_micro8", num_classes=7, **TINY_VIT)
  images = jnp.ones((2, image_size, image_size, 3))
  variables = random_variables(model, images)
  logits = evaluate(model, variables, images)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  n_tokens = (image_size // 8) ** 2 + 1
  assert variables["params"]["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, n_tokens, 32)


@pytest.mark.parametrize(
  "name, overrides, image_size",
  [
    ("resnet18", dict(width=8, stage_sizes=(1, 1)), 32),
    ("resnet50", dict(width=8, stage_sizes=(1, 1)), 40),
    ("bit_r50x1", dict(stage_sizes=(1, 1)), 24),
    ("r_vit_ti16", dict(TINY_VIT, resnet_stages=(1,), patch_size=2), 32),
  ],
)
def test_cnn_and_hybrid_output_shapes(name, overrides, image_size):
  model = models.build(name, num_classes=3, **overrides)
  images = jnp.ones((2, image_size, image_size, 3))
  logits = evaluate(model, random_variables(model, images), images)
  assert logits.shape == (2, 3) and logits.dtype == jnp.float32


def test_image_size_not_divisible_by_patch_raises():
  model = models.build("vit_micro8", num_classes=7, **TINY_VIT)
  with pytest.raises(ValueError, match="divisible"):
    abstract_variables(model, jnp.ones((1, 20, 20, 3)))


def test_no_head_returns_features():
  model = models.build("vit_micro8", num_classes=0, **TINY_VIT)
  images = images_of((2, 16, 16, 3))
  variables = random_variables(model, images)
  assert "head" not in variables["params"]
  assert evaluate(model, variables, images).shape == (2, 32)


# ---------------------------------------------------------------------------------------------------------------
# Randomness: dropout, drop-path.


def test_eval_is_deterministic_and_train_dropout_varies_with_rng():
  model = models.build("vit_micro8", num_classes=5, dropout_rate=0.3, attention_dropout_rate=0.3, **TINY_VIT)
  images = images_of((2, 16, 16, 3))
  variables = random_variables(model, images)
  apply = jax.jit(
    lambda x, rng, train: model.apply(variables, x, train=train, rngs={"dropout": rng}), static_argnames="train"
  )
  eval_a, eval_b = apply(images, jax.random.key(0), False), apply(images, jax.random.key(1), False)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a, train_a2 = apply(images, jax.random.key(0), True), apply(images, jax.random.key(0), True)
  train_b = apply(images, jax.random.key(1), True)
  np.testing.assert_array_equal(train_a, train_a2)
  assert np.abs(train_a - train_b).max() > 1e-3
  assert np.abs(train_a - eval_a).max() > 1e-3


def test_drop_path_is_identity_at_rate_zero_and_scales_survivors():
  x = images_of((64, 3, 5))
  same = layers.DropPath(0.0).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
  np.testing.assert_array_equal(same, x)
  dropped = layers.DropPath(0.5).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
  kept = np.array([np.allclose(d, 2 * xi) for d, xi in zip(dropped, x)])
  zeroed = np.array([np.all(d == 0) for d in dropped])
  assert np.all(kept ^ zeroed) and 10 < kept.sum() < 54


def test_stochastic_depth_rises_linearly_from_zero():
  images = images_of((8, 16, 16, 3))

  def train_vs_eval(num_layers):
    model = models.build("vit_micro8", num_classes=5, stochastic_depth=0.9, **dict(TINY_VIT, num_layers=num_layers))
    variables = random_variables(model, images)
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(3)}))(variables, images)
    return np.abs(train - evaluate(model, variables, images)).max(axis=1)

  # One block: its rate is 0 (the first block's), so training equals evaluation.
  np.testing.assert_allclose(train_vs_eval(1), 0.0, atol=1e-6)
  # Two blocks: the last one has rate 0.9, so most examples differ.
  assert (train_vs_eval(2) > 1e-4).sum() >= 4


# ---------------------------------------------------------------------------------------------------------------
# Precision, position embeddings, heads, BatchNorm.


def test_bfloat16_compute_close_to_float32_with_float32_params():
  images = images_of((4, 16, 16, 3))
  f32 = models.build("vit_micro8", num_classes=10, **TINY_VIT)
  bf16 = models.build("vit_micro8", num_classes=10, dtype=jnp.bfloat16, **TINY_VIT)
  variables = random_variables(f32, images, scale=0.2)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(abstract_variables(bf16, images)))
  out32 = evaluate(f32, variables, images)
  out16 = evaluate(bf16, variables, images)
  assert out16.dtype == jnp.float32
  # bfloat16 keeps 8 mantissa bits (relative step 2^-8 = 0.4%); two blocks of accumulated rounding stay
  # within 5% of the logits' scale, while a real bug (e.g. a skipped op) moves them by O(100%).
  scale = np.abs(out32).max()
  assert np.abs(out16 - out32).max() < 0.05 * scale
  assert np.abs(out16 - out32).max() > 0  # the bfloat16 path really ran in lower precision


def test_sincos_posemb_matches_formula():
  h, w, dim = 3, 4, 16
  pe = vit.posemb_sincos_2d(height=h, width=w, dim=dim)
  quarter = dim // 4
  expected = np.zeros((h * w, dim))
  for row in range(h):
    for col in range(w):
      for k in range(quarter):
        omega = 10_000.0 ** (-k / (quarter - 1))
        token = row * w + col
        expected[token, k] = math.sin(col * omega)
        expected[token, quarter + k] = math.cos(col * omega)
        expected[token, 2 * quarter + k] = math.sin(row * omega)
        expected[token, 3 * quarter + k] = math.cos(row * omega)
  assert pe.shape == (1, h * w, dim)
  np.testing.assert_allclose(pe[0], expected, rtol=1e-6, atol=1e-6)


def test_sincos_model_equals_learned_model_holding_the_same_table():
  images = images_of((2, 16, 16, 3))
  fixed = models.build("vit_micro8", num_classes=5, posemb="sincos2d", **TINY_VIT)
  learned = models.build("vit_micro8", num_classes=5, **TINY_VIT)
  fixed_vars = random_variables(fixed, images)
  assert "posembed_input" not in fixed_vars["params"]["Transformer"]
  table = vit.posemb_sincos_2d(height=2, width=2, dim=32)
  # The class token gets no position embedding in the sin-cos model.
  params = flax.core.unfreeze(fixed_vars["params"])
  params["Transformer"]["posembed_input"] = {"pos_embedding": np.concatenate([np.zeros((1, 1, 32)), table], 1)}
  np.testing.assert_allclose(
    evaluate(fixed, fixed_vars, images), evaluate(learned, {"params": params}, images), rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize("classifier", ["token", "gap", "map"])
def test_classifier_pools_encoder_output(classifier):
  model = models.build("vit_micro8", num_classes=5, classifier=classifier, **TINY_VIT)
  images = images_of((2, 16, 16, 3))
  variables = random_variables(model, images)
  logits, state = jax.jit(
    lambda v, x: model.apply(v, x, train=False, capture_intermediates=True, mutable="intermediates")
  )(variables, images)
  inter = state["intermediates"]
  encoded = inter["Transformer"]["__call__"][0]
  pre_logits = inter["pre_logits"][0]
  params = variables["params"]
  assert ("cls" in params) == (classifier == "token")
  assert ("MAPHead_0" in params) == (classifier == "map")
  assert encoded.shape[1] == 4 + (classifier == "token")
  expected = {
    "token": lambda: encoded[:, 0],
    "gap": lambda: encoded.mean(axis=1),
    "map": lambda: inter["MAPHead_0"]["__call__"][0],
  }[classifier]()
  np.testing.assert_allclose(pre_logits, expected, rtol=1e-6)
  np.testing.assert_allclose(logits, pre_logits @ params["head"]["kernel"] + params["head"]["bias"], rtol=1e-5)


def test_map_head_has_probe_and_attention_pooling():
  model = models.build("vit_micro8", num_classes=5, classifier="map", **TINY_VIT)
  params = abstract_variables(model, jnp.ones((1, 16, 16, 3)))["params"]["MAPHead_0"]
  assert params["probe"].shape == (1, 1, 32)
  assert set(params) == {"probe", "MultiHeadDotProductAttention_0", "LayerNorm_0", "MlpBlock_0"}


def test_heads_start_at_zero():
  for name, overrides in [("vit_micro8", TINY_VIT), ("resnet18", dict(width=8, stage_sizes=(1,)))]:
    model = models.build(name, num_classes=5, head_bias_init=-2.0, **overrides)
    images = images_of((2, 16, 16, 3))
    variables = init(model, images)
    np.testing.assert_array_equal(variables["params"]["head"]["kernel"], 0.0)
    np.testing.assert_array_equal(evaluate(model, variables, images), -2.0)


def test_batchnorm_statistics_update_only_in_train_mode():
  model = models.build("resnet18", num_classes=5, width=8, stage_sizes=(1,))
  images = images_of((4, 16, 16, 3))
  variables = random_variables(model, images)
  assert "batch_stats" in variables
  apply = jax.jit(
    lambda v, x, train: model.apply(
      v, x, train=train, capture_intermediates=True, mutable=["batch_stats", "intermediates"]
    ),
    static_argnames="train",
  )
  _, train_state = apply(variables, images, train=True)
  _, eval_state = apply(variables, images, train=False)
  before, after_train = flat(variables["batch_stats"]), flat(train_state["batch_stats"])
  after_eval = flat(eval_state["batch_stats"])
  assert all(np.array_equal(before[k], after_eval[k]) for k in before)
  assert all(not np.array_equal(before[k], after_train[k]) for k in before)
  # Momentum 0.9: new mean = 0.9 * 0 + 0.1 * batch mean.
  conv1_out = train_state["intermediates"]["conv1"]["__call__"][0]
  np.testing.assert_allclose(after_train["bn1/mean"], 0.1 * conv1_out.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-7)
  # In eval mode an example's output does not depend on the rest of the batch.
  full = evaluate(model, variables, images)
  alone = evaluate(model, variables, images[:1])
  np.testing.assert_allclose(full[:1], alone, rtol=1e-5, atol=1e-6)


def test_zero_init_last_bn():
  model = models.build("resnet50", num_classes=5, width=8, stage_sizes=(1,), zero_init_last_bn=True)
  stats = flat(init(model, jnp.ones((1, 16, 16, 3)))["params"])
  np.testing.assert_array_equal(stats["layer1/block0/bn3/scale"], 0.0)
  np.testing.assert_array_equal(stats["layer1/block0/bn2/scale"], 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Intermediates and layers.


def test_attention_weights_and_pre_logits_are_sown():
  model = models.build("vit_micro8", num_classes=5, **TINY_VIT)
  images = images_of((2, 16, 16, 3))
  variables = random_variables(model, images)
  _, state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable="intermediates"))(variables, images)
  inter = state["intermediates"]
  assert inter["pre_logits"][0].shape == (2, 32)
  for i in range(TINY_VIT["num_layers"]):
    (weights,) = inter["Transformer"][f"encoderblock_{i}"]["MultiHeadDotProductAttention_0"]["attention_weights"]
    assert weights.shape == (2, 4, 5, 5)
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-5)
    assert np.all(weights >= 0) and weights.std() > 1e-3


@pytest.mark.parametrize("strides, padding", [((1, 1), "SAME"), ((2, 2), "SAME"), ((2, 2), ((0, 0), (0, 0)))])
def test_einsum_1x1_conv_equals_lax_conv(strides, padding):
  x = images_of((2, 7, 8, 5))
  conv = layers.Conv(4, (1, 1), strides, padding=padding, use_bias=True)
  params = fill_random(jax.eval_shape(conv.init, jax.random.key(0), x))
  reference = nn.Conv(4, (1, 1), strides, padding=padding)
  np.testing.assert_allclose(conv.apply(params, x), reference.apply(params, x), rtol=1e-5, atol=1e-6)


def test_forward_gflops_matches_matmul_count():
  # ViT-B/16 at 224: patch embedding, 12 blocks of (4 D^2 + 2 D M) per token plus 2 L^2 D attention, head.
  tokens, dim, mlp = 197, 768, 3072
  macs = 196 * 768 * dim + 12 * (tokens * (4 * dim * dim + 2 * dim * mlp) + 2 * tokens * tokens * dim) + dim * 1000
  gflops = models.forward_gflops(models.build("vit_b16", num_classes=1000), image_size=224)
  assert 2 * macs / 1e9 <= gflops < 1.01 * 2 * macs / 1e9


def test_parameter_overview_reports_total():
  model = models.build("vit_micro8", num_classes=10)
  text = models.parameter_overview(random_variables(model, jnp.ones((1, 32, 32, 3)))["params"])
  assert "Transformer/encoderblock_3/MlpBlock_0/Dense_1/kernel" in text
  assert f"Total: {count_params(model, image_size=32):,}" in text


# ---------------------------------------------------------------------------------------------------------------
# Independent numpy references (float64) given the same parameters.


def np_vit(images, p, *, patch, classifier, representation=False):
  n, hh, ww, c = images.shape
  grid = images.reshape(n, hh // patch, patch, ww // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  x = grid.reshape(n, -1, patch * patch * c) @ p["embedding"]["kernel"].reshape(-1, p["embedding"]["bias"].size)
  x = x + p["embedding"]["bias"]
  if classifier == "token":
    x = np.concatenate([np.repeat(p["cls"], n, axis=0), x], axis=1)
  t = p["Transformer"]
  x = x + t["posembed_input"]["pos_embedding"]
  i = 0
  while f"encoderblock_{i}" in t:
    b = t[f"encoderblock_{i}"]
    x = x + np_attention(
      np_layer_norm(x, b["LayerNorm_0"]), np_layer_norm(x, b["LayerNorm_0"]), b["MultiHeadDotProductAttention_0"]
    )
    x = x + np_mlp(np_layer_norm(x, b["LayerNorm_1"]), b["MlpBlock_0"])
    i += 1
  x = np_layer_norm(x, t["encoder_norm"])
  if classifier == "token":
    x = x[:, 0]
  elif classifier == "gap":
    x = x.mean(1)
  else:
    m = p["MAPHead_0"]
    probe = np.repeat(m["probe"], n, axis=0)
    y = np_attention(probe, x, m["MultiHeadDotProductAttention_0"])
    x = (y + np_mlp(np_layer_norm(y, m["LayerNorm_0"]), m["MlpBlock_0"]))[:, 0]
  if representation:
    x = np.tanh(x @ p["pre_logits"]["kernel"] + p["pre_logits"]["bias"])
  return x @ p["head"]["kernel"] + p["head"]["bias"]


@pytest.mark.parametrize("classifier, representation", [("token", True), ("gap", False), ("map", False)])
def test_vit_matches_numpy_reference(classifier, representation):
  model = models.build(
    "vit_micro4", num_classes=6, classifier=classifier, representation_size=16 if representation else None, **TINY_VIT
  )
  images = images_of((2, 12, 8, 3))
  variables = random_variables(model, images)
  ours = evaluate(model, variables, images)
  ref = np_vit(
    np.asarray(images, np.float64),
    to_numpy(variables["params"]),
    patch=4,
    classifier=classifier,
    representation=representation,
  )
  assert np.abs(ref).max() > 0.1  # a meaningful comparison, not zeros against zeros
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def np_max_pool(x, *, padding, pad_value):
  pads = [same_padding(x.shape[1], 3, 2), same_padding(x.shape[2], 3, 2)] if padding == "SAME" else [padding] * 2
  x = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)], constant_values=pad_value)
  ho, wo = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
  windows = [x[:, i : i + 2 * (ho - 1) + 1 : 2, j : j + 2 * (wo - 1) + 1 : 2] for i in range(3) for j in range(3)]
  return np.max(windows, axis=0)


def np_group_norm(x, p, *, eps, groups=32):
  n, h, w, c = x.shape
  g = x.reshape(n, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * p["scale"] + p["bias"]


def np_standardize(w, *, eps, eps_on_std):
  w = w - w.mean(axis=(0, 1, 2))
  std = w.std(axis=(0, 1, 2))
  return w / (std + eps) if eps_on_std else w / np.sqrt(std**2 + eps)


def np_resnet_v15(images, p, s):
  x = relu(np_batch_norm(np_conv(images, p["conv1"]["kernel"], stride=2, padding=(3, 3)), p["bn1"], s["bn1"]))
  x = np_max_pool(x, padding=(1, 1), pad_value=-np.inf)
  for stage in ("layer1", "layer2"):
    b, bs = p[stage]["block0"], s[stage]["block0"]
    stride = 1 if stage == "layer1" else 2
    y = relu(np_batch_norm(np_conv(x, b["conv1"]["kernel"], padding=(0, 0)), b["bn1"], bs["bn1"]))
    y = relu(np_batch_norm(np_conv(y, b["conv2"]["kernel"], stride=stride, padding=(1, 1)), b["bn2"], bs["bn2"]))
    y = np_batch_norm(np_conv(y, b["conv3"]["kernel"], padding=(0, 0)), b["bn3"], bs["bn3"])
    shortcut = np_batch_norm(
      np_conv(x, b["downsample_conv"]["kernel"], stride=stride, padding=(0, 0)), b["downsample_bn"], bs["downsample_bn"]
    )
    x = relu(y + shortcut)
  return x.mean(axis=(1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]


def test_resnet_v15_matches_numpy_reference():
  # Odd sizes (19 -> 10 -> 5 -> 3) exercise the symmetric padding of strided convolutions and pooling.
  model = models.build("resnet50", num_classes=4, width=8, stage_sizes=(1, 1))
  images = images_of((2, 19, 19, 3))
  variables = random_variables(model, images)
  stats = jax.tree.map(lambda a: a + 0.5 * jax.random.uniform(jax.random.key(5), a.shape), variables["batch_stats"])
  variables = {**variables, "batch_stats": stats}
  ours = evaluate(model, variables, images)
  ref = np_resnet_v15(np.asarray(images, np.float64), to_numpy(variables["params"]), to_numpy(stats))
  assert np.abs(ref).max() > 0.1
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def np_bit(images, p):
  std = lambda w: np_standardize(w, eps=1e-10, eps_on_std=False)  # noqa: E731
  gn = lambda x, q: np_group_norm(x, q, eps=1e-5)  # noqa: E731
  x = np_conv(images, std(p["root_block"]["standardized_conv2d"]["kernel"]), stride=2, padding=(3, 3))
  x = np_max_pool(x, padding=(1, 1), pad_value=0.0)  # BiT pads the max-pool input with zeros
  for stage in ("block1", "block2"):
    u = p[stage]["unit01"]
    stride = 1 if stage == "block1" else 2
    a = relu(gn(x, u["a"]["group_norm"]))
    shortcut = np_conv(a, std(u["a"]["proj"]["standardized_conv2d"]["kernel"]), stride=stride, padding=(0, 0))
    y = np_conv(a, std(u["a"]["standardized_conv2d"]["kernel"]), padding=(0, 0))
    y = np_conv(
      relu(gn(y, u["b"]["group_norm"])), std(u["b"]["standardized_conv2d"]["kernel"]), stride=stride, padding=(1, 1)
    )
    y = np_conv(relu(gn(y, u["c"]["group_norm"])), std(u["c"]["standardized_conv2d"]["kernel"]), padding=(0, 0))
    x = y + shortcut
  x = relu(gn(x, p["group_norm"])).mean(axis=(1, 2))
  return x @ p["head"]["conv2d"]["kernel"][0, 0] + p["head"]["conv2d"]["bias"]


def test_bit_matches_numpy_reference():
  model = models.build("bit_r50x1", num_classes=4, stage_sizes=(1, 1))
  images = images_of((2, 18, 18, 3))
  variables = random_variables(model, images)
  ours = evaluate(model, variables, images)
  ref = np_bit(np.asarray(images, np.float64), to_numpy(variables["params"]))
  assert np.abs(ref).max() > 0.1
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def np_hybrid_stem(images, p):
  std = lambda w: np_standardize(w, eps=1e-5, eps_on_std=True)  # noqa: E731
  gn = lambda x, q: np_group_norm(x, q, eps=1e-6)  # noqa: E731
  x = relu(gn(np_conv(images, std(p["conv_root"]["kernel"]), stride=2), p["gn_root"]))
  x = np_max_pool(x, padding="SAME", pad_value=-np.inf)
  u = p["block1"]["unit1"]
  shortcut = gn(np_conv(x, std(u["conv_proj"]["kernel"])), u["gn_proj"])
  y = relu(gn(np_conv(x, std(u["conv1"]["kernel"])), u["gn1"]))
  y = relu(gn(np_conv(y, std(u["conv2"]["kernel"])), u["gn2"]))
  y = gn(np_conv(y, std(u["conv3"]["kernel"])), u["gn3"])
  return relu(y + shortcut)


def test_hybrid_matches_numpy_reference():
  model = models.build("r_vit_ti16", num_classes=4, resnet_stages=(1,), patch_size=2, **TINY_VIT)
  images = images_of((2, 30, 30, 3))  # 30 -> 15 -> 8 (SAME), odd sizes check XLA SAME padding
  variables = random_variables(model, images)
  params = to_numpy(variables["params"])
  features = np_hybrid_stem(np.asarray(images, np.float64), params)
  ours = evaluate(model, variables, images)
  ref = np_vit(features, params, patch=2, classifier="token")
  assert np.abs(ref).max() > 0.1
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_weight_standardization_epsilons_follow_the_public_code():
  # A kernel with std 1e-3 makes the epsilon placement visible: 1e-5 on the std moves the result by 1%.
  w = 1e-3 * np.random.default_rng(0).standard_normal((3, 3, 4, 5))
  centred = w - w.mean(axis=(0, 1, 2))
  std = centred.std(axis=(0, 1, 2))
  np.testing.assert_allclose(hybrid.vit_standardize(w), centred / (std + 1e-5), rtol=1e-5)
  np.testing.assert_allclose(resnet.bit_standardize(w), centred / np.sqrt(std**2 + 1e-10), rtol=1e-5)
  assert np.abs(centred / (std + 1e-5) - centred / np.sqrt(std**2 + 1e-5)).max() > 0.1


def test_batchnorm_matches_flax_values_gradients_and_statistics():
  x = images_of((4, 5, 5, 6)) * 3.0 + 1.0
  ours, theirs = (
    layers.BatchNorm(use_running_average=False),
    nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5),
  )
  variables = fill_random(jax.eval_shape(theirs.init, jax.random.key(0), x), scale=1.0)

  def loss_and_stats(module, variables, x):
    y, state = module.apply(variables, x, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y)), (y, state["batch_stats"])

  def grads(module):
    return jax.jit(jax.grad(loss_and_stats, argnums=(1, 2), has_aux=True), static_argnums=0)(module, variables, x)

  ((our_dvars, our_dx), (our_y, our_stats)), ((their_dvars, their_dx), (their_y, their_stats)) = (
    grads(ours),
    grads(theirs),
  )
  np.testing.assert_allclose(our_y, their_y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(our_dx, their_dx, rtol=1e-4, atol=1e-5)
  for name in ("scale", "bias"):
    np.testing.assert_allclose(our_dvars["params"][name], their_dvars["params"][name], rtol=1e-4, atol=1e-5)
  for name in ("mean", "var"):
    np.testing.assert_allclose(our_stats[name], their_stats[name], rtol=1e-5, atol=1e-6)
  assert np.abs(our_dx).max() > 1e-2


@pytest.mark.parametrize("features", [3, 8])
def test_einsum_1x1_conv_gradients_equal_lax_conv(features):
  # Both orders of the explicit weight-gradient transpose (narrower input, then narrower output).
  x = images_of((2, 6, 6, 5))
  conv = layers.Conv(features, (1, 1), (2, 2), use_bias=True)
  params = fill_random(jax.eval_shape(conv.init, jax.random.key(0), x))
  reference = nn.Conv(features, (1, 1), (2, 2))
  loss = lambda module: jax.grad(lambda p, x: jnp.sum(jnp.sin(module.apply(p, x))), argnums=(0, 1))  # noqa: E731
  (ours_p, ours_x), (ref_p, ref_x) = loss(conv)(params, x), loss(reference)(params, x)
  np.testing.assert_allclose(ours_x, ref_x, rtol=1e-5, atol=1e-6)
  for name in ("kernel", "bias"):
    np.testing.assert_allclose(ours_p["params"][name], ref_p["params"][name], rtol=1e-5, atol=1e-6)
  assert np.abs(ours_p["params"]["kernel"]).max() > 1e-2


def test_exact_gelu_is_erf_to_float32_precision():
  """`layers.gelu` (plain arithmetic, so that it exports) against the erf of the standard library and nn.gelu."""
  x = np.linspace(-9, 9, 20_001).astype(np.float32)
  expected = np.array([math.erf(v) for v in x.astype(np.float64)])
  assert np.abs(np.asarray(layers.erf(x)) - expected).max() < 5e-7
  gelu = np.asarray(layers.gelu(x))
  np.testing.assert_allclose(gelu, np.asarray(jax.nn.gelu(x, approximate=False)), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(layers.gelu(x, approximate=True), jax.nn.gelu(x, approximate=True))
