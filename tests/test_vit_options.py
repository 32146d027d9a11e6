"""ViT options: registers, qk-norm, 2-D RoPE, LayerScale, FlexiViT, remat, scan and fused attention, each against
numpy references, its defining property, or the plain model holding the same parameters."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support import TINY_VIT, abstract_variables, evaluate, flat, images_of, random_variables
from vitjax import models, transfer
from vitjax.models import attention, flexi, rope, vit
from vitjax.transfer import importer

IMAGES = images_of((2, 16, 16, 3))


def build(**options):
  return models.build("vit_micro8", num_classes=5, **TINY_VIT, **options)


def with_intermediates(model, variables, images):
  return jax.jit(lambda v, x: model.apply(v, x, train=False, mutable="intermediates"))(variables, images)


# ---------------------------------------------------------------------------------------------------------------
# 2-D RoPE.


def numpy_rope(x, height, width, base=100.0):
  """Pair (2i, 2i+1) of head channel d rotated by x * base^(-i/(d/4)) for the first d/4 pairs and by
  y * base^(-(i - d/4)/(d/4)) for the rest, token t at row t // width, column t % width."""
  out = np.array(x, np.float64)
  d = x.shape[-1]
  for t in range(height * width):
    row, col = divmod(t, width)
    for i in range(d // 2):
      pos, k = (col, i) if i < d // 4 else (row, i - d // 4)
      theta = pos * base ** (-k / (d // 4))
      a, b = x[:, t, :, 2 * i], x[:, t, :, 2 * i + 1]
      out[:, t, :, 2 * i] = a * np.cos(theta) - b * np.sin(theta)
      out[:, t, :, 2 * i + 1] = a * np.sin(theta) + b * np.cos(theta)
  return out


def test_rope_matches_formula_and_skips_prefix_tokens():
  x = np.random.default_rng(0).standard_normal((2, 1 + 6, 3, 8)).astype(np.float32)
  angles = rope.rope_2d_angles(height=2, width=3, head_dim=8)
  rotated = np.asarray(rope.apply_rope(jnp.asarray(x), angles, num_prefix=1))
  np.testing.assert_array_equal(rotated[:, 0], x[:, 0])
  np.testing.assert_allclose(rotated[:, 1:], numpy_rope(x[:, 1:], 2, 3), rtol=1e-5, atol=1e-6)


def test_rope_keeps_norms_and_dot_products_depend_only_on_the_offset():
  rng = np.random.default_rng(1)
  q, k = rng.standard_normal((2, 16)).astype(np.float32)
  height = width = 6
  grid = np.zeros((1, height * width, 1, 16), np.float32)

  def rotated_at(vector, row, col):
    x = grid.copy()
    x[0, row * width + col, 0] = vector
    angles = rope.rope_2d_angles(height=height, width=width, head_dim=16)
    return np.asarray(rope.apply_rope(jnp.asarray(x), angles, num_prefix=0))[0, row * width + col, 0]

  np.testing.assert_allclose(np.linalg.norm(rotated_at(q, 4, 5)), np.linalg.norm(q), rtol=1e-5)
  # Query at (1, 2) and key at (3, 0) against both moved by (+2, +3): offset (2, -2) in both cases.
  before = rotated_at(q, 1, 2) @ rotated_at(k, 3, 0)
  after = rotated_at(q, 3, 5) @ rotated_at(k, 5, 3)
  np.testing.assert_allclose(before, after, rtol=1e-4)
  assert abs(before - rotated_at(q, 1, 2) @ rotated_at(k, 3, 1)) > 1e-3  # another offset: another product


def test_rope_model_has_no_position_table():
  params = abstract_variables(build(posemb="rope2d"), IMAGES)["params"]
  assert "posembed_input" not in params["Transformer"]


# ---------------------------------------------------------------------------------------------------------------
# Registers, qk-norm, LayerScale.


def numpy_layer_norm(x, scale, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * scale + bias


def test_qk_norm_attention_matches_numpy():
  module = attention.MultiHeadDotProductAttention(num_heads=2, qk_norm=True)
  x = np.random.default_rng(2).standard_normal((2, 5, 8)).astype(np.float32)
  variables = random_variables_of(module, x)
  p = {k: np.asarray(v, np.float64) for k, v in flat(variables["params"]).items()}
  out = jax.jit(lambda v, x: module.apply(v, x, x, deterministic=True))(variables, x)
  q = numpy_layer_norm(np.einsum("nte,ehd->nthd", x, p["query/kernel"]) + p["query/bias"], *norm(p, "query"))
  k = numpy_layer_norm(np.einsum("nte,ehd->nthd", x, p["key/kernel"]) + p["key/bias"], *norm(p, "key"))
  v = np.einsum("nte,ehd->nthd", x, p["value/kernel"]) + p["value/bias"]
  logits = np.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(4)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  expected = np.einsum("nhqk,nkhd,hde->nqe", weights, v, p["out/kernel"]) + p["out/bias"]
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  assert p["query_norm/scale"].shape == p["key_norm/bias"].shape == (4,)


def random_variables_of(module, x):
  abstract = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, x, deterministic=True), x)
  rng = np.random.default_rng(3)
  return jax.tree.map(lambda a: (0.5 * rng.standard_normal(a.shape) + 0.1).astype(np.float32), abstract)


def norm(p, name):
  return p[f"{name}_norm/scale"], p[f"{name}_norm/bias"]


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_registers_join_attention_and_are_dropped_before_pooling(classifier):
  model = build(num_registers=3, classifier=classifier)
  variables = random_variables(model, IMAGES)
  params = flat(variables["params"])
  assert params["registers"].shape == (1, 3, 32)
  # Registers get no position embedding: the table covers the class token (if any) and the 2x2 grid.
  assert params["Transformer/posembed_input/pos_embedding"].shape == (1, 4 + (classifier == "token"), 32)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True, mutable="intermediates"))
  logits, state = apply(variables, IMAGES)
  inter = state["intermediates"]
  encoded, pre_logits = inter["Transformer"]["__call__"][0], inter["pre_logits"][0]
  num_cls = int(classifier == "token")
  assert encoded.shape[1] == num_cls + 3 + 4
  (weights,) = inter["Transformer"]["encoderblock_0"]["MultiHeadDotProductAttention_0"]["attention_weights"]
  assert weights.shape == (2, 4, 7 + num_cls, 7 + num_cls)
  expected = encoded[:, 0] if num_cls else encoded[:, 3:].mean(axis=1)
  np.testing.assert_allclose(pre_logits, expected, rtol=1e-5, atol=1e-6)
  other = flax.core.unfreeze(variables)
  other["params"]["registers"] = np.random.default_rng(5).standard_normal((1, 3, 32)).astype(np.float32)
  assert np.abs(apply(other, IMAGES)[0] - logits).max() > 1e-3  # the registers take part in attention


def test_layerscale_names_init_and_scales_the_branches():
  init = vit.LayerScale(1e-5).init(jax.random.key(0), jnp.ones((1, 2, 32)))
  np.testing.assert_array_equal(init["params"]["scale"], np.full(32, 1e-5, np.float32))
  model, plain = build(layerscale=1e-5), build()
  variables = random_variables(plain, IMAGES)
  scaled, halved = flax.core.unfreeze(variables), flax.core.unfreeze(variables)
  for i in range(2):
    block = scaled["params"]["Transformer"][f"encoderblock_{i}"]
    block["LayerScale_0"], block["LayerScale_1"] = {"scale": np.ones(32)}, {"scale": np.full(32, 0.5)}
    dense = halved["params"]["Transformer"][f"encoderblock_{i}"]["MlpBlock_0"]["Dense_1"]
    dense["kernel"], dense["bias"] = dense["kernel"] * 0.5, dense["bias"] * 0.5
  assert jax.tree.map(np.shape, abstract_variables(model, IMAGES)) == jax.tree.map(np.shape, scaled)
  np.testing.assert_allclose(evaluate(model, scaled, IMAGES), evaluate(plain, halved, IMAGES), rtol=1e-4, atol=1e-5)


def test_options_come_from_config():
  from vitjax.configs import common

  config = common.get_base_config().model
  config.update(dict(name="vit_micro8", num_registers=4, qk_norm=True, patch_sizes=(4, 8), remat="full", scan=True))
  model = models.from_config(config, num_classes=3)
  assert (model.num_registers, model.qk_norm, tuple(model.patch_sizes), model.remat, model.scan) == (
    4,
    True,
    (4, 8),
    "full",
    True,
  )
  with pytest.raises(ValueError, match="Unknown remat 'some'; choose one of: none, full, .*dots_saveable"):
    abstract_variables(build(remat="some"), IMAGES)


# ---------------------------------------------------------------------------------------------------------------
# FlexiViT.


def test_pinv_resized_kernel_on_resized_image_gives_the_same_tokens():
  rng = np.random.default_rng(4)
  image = rng.uniform(-1, 1, (1, 12, 12, 3)).astype(np.float32)
  kernel = rng.standard_normal((4, 4, 3, 6)).astype(np.float32)
  tokens = jax.lax.conv_general_dilated(image, kernel, (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # Each 4x4 patch resized bilinearly to 8x8 on its own (FlexiViT's resize(x)), laid out as a 24x24 image.
  patches = image.reshape(3, 4, 3, 4, 3).transpose(0, 2, 1, 3, 4)
  resize = jax.vmap(jax.vmap(lambda x: jax.image.resize(x, (8, 8, 3), "bilinear", antialias=False)))
  big = resize(patches).transpose(0, 2, 1, 3, 4).reshape(1, 24, 24, 3)
  resized = models.resize_patch_embedding(kernel, 8)
  big_tokens = jax.lax.conv_general_dilated(big, resized, (8, 8), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert resized.shape == (8, 8, 3, 6)
  np.testing.assert_allclose(big_tokens, tokens, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(models.resize_patch_embedding(kernel, 4), kernel)


def test_bilinear_matrix_is_jax_image_resize():
  basis = np.eye(5)
  np.testing.assert_allclose(
    flexi.bilinear_matrix(5, 9),
    jax.vmap(lambda v: jax.image.resize(v, (9,), "bilinear", antialias=False))(basis).T,
    atol=1e-6,
  )


def test_patch_sizes_train_step_draws_a_size_per_rng_and_eval_uses_patch_size():
  model, plain = build(patch_sizes=(4, 8)), build()
  variables = random_variables(plain, IMAGES)
  assert jax.tree.map(np.shape, abstract_variables(model, IMAGES)) == jax.tree.map(np.shape, variables)
  np.testing.assert_allclose(evaluate(model, variables, IMAGES), evaluate(plain, variables, IMAGES), rtol=1e-5)

  def loss(params, rng):
    return model.apply({"params": params}, IMAGES, train=True, rngs={"dropout": rng}).sum()

  step = jax.jit(jax.value_and_grad(loss))
  losses = np.array([step(variables["params"], jax.random.key(seed))[0] for seed in range(8)])
  at_8 = float(jax.jit(lambda v: plain.apply(v, IMAGES, train=True).sum())(variables))
  # Two distinct losses, one per patch size; patch 8 is the plain model's.
  distinct = np.unique(losses.round(4))
  assert len(distinct) == 2 and np.isclose(distinct, at_8, rtol=1e-4).sum() == 1
  grads = step(variables["params"], jax.random.key(0))[1]
  assert np.abs(grads["embedding"]["kernel"]).max() > 0


# ---------------------------------------------------------------------------------------------------------------
# remat, scan, fused attention.


def stacked(params):
  """Per-block parameters stacked as a scanned model holds them."""
  target = flat(abstract_variables(build(scan=True, num_registers=1, qk_norm=True, layerscale=0.5), IMAGES)["params"])
  return flax.traverse_util.unflatten_dict(importer.blocks_like(flat(params), target), sep="/")


def test_remat_and_scan_give_the_plain_loss_and_gradients():
  images, labels = IMAGES, jnp.array([1, 3])
  plain = build(num_registers=1, qk_norm=True, layerscale=0.5)
  params = random_variables(plain, images, scale=0.2)["params"]

  def loss_and_grads(model, params):
    def loss(p):
      logits = model.apply({"params": p}, images, train=True, rngs={"dropout": jax.random.key(0)})
      return -jax.nn.log_softmax(logits)[jnp.arange(2), labels].mean()

    return jax.jit(jax.value_and_grad(loss))(params)

  loss, grads = loss_and_grads(plain, params)
  for options in [dict(remat="dots_saveable"), dict(remat="full", scan=True)]:
    model = build(num_registers=1, qk_norm=True, layerscale=0.5, **options)
    source = stacked(params) if options.get("scan") else params
    other_loss, other_grads = loss_and_grads(model, source)
    np.testing.assert_allclose(other_loss, loss, rtol=1e-5)
    expected = flat(stacked(grads) if options.get("scan") else grads)
    for key, value in flat(other_grads).items():
      np.testing.assert_allclose(value, expected[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_per_block_checkpoint_loads_into_scanned_model_and_back(tmp_path):
  plain, scanned = build(), build(scan=True)
  variables = random_variables(plain, IMAGES)
  path = str(tmp_path / "per_block.npz")
  np.savez(path, **flat(variables["params"]))
  restored, _ = transfer.load_variables(path, abstract_variables(scanned, IMAGES))
  assert restored["params"]["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"].shape == (2, 32, 64)
  np.testing.assert_allclose(evaluate(scanned, restored, IMAGES), evaluate(plain, variables, IMAGES), rtol=1e-5)
  back, _ = transfer.match_params(
    flat(restored["params"]), flat(variables["params"]), dont_load=(), keep_pre_logits=True
  )
  assert all(np.array_equal(back[k], v) for k, v in flat(variables["params"]).items())


def test_fused_attention_equals_explicit_and_weights_are_still_recorded(monkeypatch):
  fused, explicit = build(classifier="map"), build(classifier="map", attention="explicit")
  variables = random_variables(fused, IMAGES)
  calls = []
  original = attention.softmax_attention
  monkeypatch.setattr(attention, "softmax_attention", lambda *a, **k: calls.append(k) or original(*a, **k))
  np.testing.assert_allclose(
    evaluate(fused, variables, IMAGES), evaluate(explicit, variables, IMAGES), rtol=1e-5, atol=1e-6
  )
  assert len(calls) == 3  # two blocks and the MAP head; the explicit model made none
  _, state = with_intermediates(fused, variables, IMAGES)
  assert len(calls) == 3  # recording the weights takes the explicit path
  (weights,) = state["intermediates"]["Transformer"]["encoderblock_1"]["MultiHeadDotProductAttention_0"][
    "attention_weights"
  ]
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)


def attention_and_gradients(function, inputs, cotangent):
  out, pullback = jax.vjp(function, *inputs)
  return [np.float32(t) for t in (out, *pullback(cotangent))]


def test_softmax_attention_is_jax_dot_product_attention_with_its_gradients():
  inputs = [jax.random.normal(jax.random.key(i), (2, 7, 3, 8)) * (4.0 if i < 2 else 1.0) for i in range(3)]
  cotangent = jax.random.normal(jax.random.key(3), (2, 7, 3, 8))
  reference = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=1.0)  # noqa: E731
  exact = attention_and_gradients(reference, inputs, cotangent)
  for got, want in zip(attention_and_gradients(attention.softmax_attention, inputs, cotangent), exact):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # In bfloat16 it is as close to the float32 values as jax's own attention is.
  half = [t.astype(jnp.bfloat16) for t in inputs]
  assert attention.softmax_attention(*half).dtype == jnp.bfloat16
  ours = attention_and_gradients(attention.softmax_attention, half, cotangent.astype(jnp.bfloat16))
  theirs = attention_and_gradients(reference, half, cotangent.astype(jnp.bfloat16))
  for mine, jaxs, want in zip(ours, theirs, exact):
    assert np.abs(mine - want).max() <= 2 * np.abs(jaxs - want).max() + 1e-3


def test_unknown_attention_implementation_is_named():
  model = build(attention="flash")
  with pytest.raises(ValueError, match="Unknown attention 'flash'; choose one of: explicit, xla, cudnn"):
    random_variables(model, IMAGES)
