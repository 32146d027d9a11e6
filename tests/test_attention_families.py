"""DeiT, Swin, MLP-Mixer and CoAtNet: exact parameter counts, independent numpy references, the DeiT distillation
objective, and timm `.safetensors` files (written here in timm's layout) loading onto each family."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
from scipy.special import erf

from tests.support import (
  abstract_variables,
  fill_random,
  flat,
  images_of,
  np_attention,
  np_conv,
  np_layer_norm,
  np_mlp,
  to_numpy,
)
from vitjax import losses, models, transfer
from vitjax.models import swin, vit
from vitjax.train import objectives
from vitjax.transfer import timm as timm_convert

TINY = {
  # ViT-micro's width and heads: timm files do not record the head count, the converter takes it from the width.
  "deit": ("deit_ti16_distilled", dict(vit.VARIANTS["micro"], mlp_dim=32, num_layers=2, patch_size=4)),
  "vit": ("vit_micro4", dict(mlp_dim=32, num_layers=2)),
  # Window 3 on a 12x12 then 6x6 grid: both stages shift, and the masks cut windows at the wrapped borders.
  "swin": ("swin_t", dict(embed_dim=8, depths=(2, 2), num_heads=(2, 4), patch_size=2, window_size=3)),
  "mixer": ("mixer_b16", dict(hidden_size=8, num_blocks=2, tokens_mlp_dim=6, channels_mlp_dim=12, patch_size=4)),
  "coatnet": (
    "coatnet_0",
    dict(embed_dims=(8, 16, 32, 32), depths=(2, 1, 2, 1), stem_width=8, head_hidden_size=12, dim_head=8),
  ),
}


@functools.cache
def tiny(family):
  """One module object per family, so that the jitted functions of `eval_fn` are compiled once per shape."""
  name, kwargs = TINY[family]
  return models.build(name, num_classes=5, **kwargs)


def random_variables(model, images, seed=0):
  """Random parameters (N(0, 0.3^2)); BatchNorm statistics random too, with variances in [0.5, 1.5]."""
  variables = fill_random(abstract_variables(model, images), seed=seed)
  rng = np.random.default_rng(seed + 1)
  if "batch_stats" in variables:
    variables["batch_stats"] = jax.tree_util.tree_map_with_path(
      lambda path, a: (
        rng.uniform(0.5, 1.5, a.shape) if path[-1].key == "var" else 0.2 * rng.normal(size=a.shape)
      ).astype(np.float32),
      variables["batch_stats"],
    )
  return variables


@functools.cache
def eval_fn(model):
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def gelu(x):
  return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def dense(x, p):
  return x @ p["kernel"] + p["bias"] if "bias" in p else x @ p["kernel"]


def silu(x):
  return x / (1 + np.exp(-x))


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------------
# Independent numpy references (float64) given the same parameters.


def rel_bias(table, h, w):
  """(heads, N, N) bias: entry (a, b) reads row (dy + h - 1) * (2w - 1) + dx + w - 1 of the table."""
  coords = [(i, j) for i in range(h) for j in range(w)]
  rows = [[(ia - ib + h - 1) * (2 * w - 1) + ja - jb + w - 1 for ib, jb in coords] for ia, ja in coords]
  return table[np.array(rows)].transpose(2, 0, 1)


def np_window_attention(x, p, *, heads, window, shift):
  """Swin's (shifted) window attention, window by window; tokens of wrapped-around regions see each other at -100."""
  b, h, w, c = x.shape
  rolled = np.roll(x, (-shift, -shift), axis=(1, 2))
  # In the rolled frame, a row or column came from the far border iff it is among the last `shift`.
  wrapped_rows, wrapped_cols = np.arange(h) >= h - shift, np.arange(w) >= w - shift
  out = np.zeros_like(rolled)
  bias = rel_bias(p["relative_position_bias_table"], window, window)
  for i0 in range(0, h, window):
    for j0 in range(0, w, window):
      tokens = rolled[:, i0 : i0 + window, j0 : j0 + window].reshape(b, -1, c)
      region = [(wrapped_rows[i0 + i], wrapped_cols[j0 + j]) for i in range(window) for j in range(window)]
      mask = np.array([[0.0 if ra == rb else -100.0 for rb in region] for ra in region])
      q, k, v = dense(tokens, p["qkv"]).reshape(b, -1, 3, heads, c // heads).transpose(2, 0, 3, 1, 4)
      logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(c // heads) + bias + mask
      y = (softmax(logits) @ v).transpose(0, 2, 1, 3).reshape(b, window, window, c)
      out[:, i0 : i0 + window, j0 : j0 + window] = dense(y, p["proj"])
  return np.roll(out, (shift, shift), axis=(1, 2))


def np_swin(images, p, *, patch, window, heads, shifts=True):
  x = np_conv(images, p["patch_embed"]["proj"]["kernel"], stride=patch, padding=(0, 0))
  x = np_layer_norm(x + p["patch_embed"]["proj"]["bias"], p["patch_embed"]["norm"], eps=1e-5)
  for i, stage_heads in enumerate(heads):
    stage = p[f"layers_{i}"]
    if i:
      x = np.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
      x = dense(np_layer_norm(x, stage["downsample"]["norm"], eps=1e-5), stage["downsample"]["reduction"])
    size = min(window, x.shape[1])
    j = 0
    while f"blocks_{j}" in stage:
      blk = stage[f"blocks_{j}"]
      shift = size // 2 if shifts and j % 2 and x.shape[1] > window else 0
      y = np_layer_norm(x, blk["norm1"], eps=1e-5)
      x = x + np_window_attention(y, blk["attn"], heads=stage_heads, window=size, shift=shift)
      y = np_layer_norm(x, blk["norm2"], eps=1e-5)
      x = x + dense(gelu(dense(y, blk["mlp"]["fc1"])), blk["mlp"]["fc2"])
      j += 1
  x = np_layer_norm(x, p["norm"], eps=1e-5).mean(axis=(1, 2))
  return dense(x, p["head"])


def swin_reference(variables, images):
  return np_swin(np.asarray(images, np.float64), to_numpy(variables["params"]), patch=2, window=3, heads=(2, 4))


def test_swin_matches_numpy_reference():
  model, images = tiny("swin"), images_of((2, 24, 24, 3))
  variables = random_variables(model, images)
  ref = swin_reference(variables, images)
  assert np.abs(ref).max() > 0.1
  np.testing.assert_allclose(eval_fn(model)(variables, images), ref, rtol=1e-4, atol=1e-4)


def test_swin_shift_mask_matters_and_bad_sizes_raise():
  model, images = tiny("swin"), images_of((1, 24, 24, 3))
  variables = random_variables(model, images)
  params = to_numpy(variables["params"])
  no_shift = np_swin(np.asarray(images, np.float64), params, patch=2, window=3, heads=(2, 4), shifts=False)
  # Pooling over all tokens damps it, yet the shift moves the logits by over 5x the tolerance the model meets.
  assert np.abs(swin_reference(variables, images) - no_shift).max() > 5e-4
  with pytest.raises(ValueError, match="does not divide into 3x3 windows"):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), jnp.zeros((1, 20, 20, 3)))
  with pytest.raises(ValueError, match="odd"):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), jnp.zeros((1, 18, 18, 3)))


def test_swin_shift_mask_keeps_wrapped_regions_apart():
  mask = swin.shift_mask(12, 9, (3, 3), (1, 1))  # 4 x 3 windows
  wrapped = lambda i, j: (i >= 11, j >= 8)  # noqa: E731  # rolled-frame rows/columns that came from the far border
  for w, (i0, j0) in enumerate((i, j) for i in range(0, 12, 3) for j in range(0, 9, 3)):
    region = [wrapped(i0 + i, j0 + j) for i in range(3) for j in range(3)]
    np.testing.assert_array_equal(mask[w], [[0.0 if a == b else -100.0 for b in region] for a in region])
  assert (mask[-1] != 0).any() and not (mask[0] != 0).any()


def np_mixer(images, p, *, patch):
  x = np_conv(images, p["stem"]["kernel"], stride=patch, padding=(0, 0)) + p["stem"]["bias"]
  x = x.reshape(x.shape[0], -1, x.shape[-1])
  i = 0
  while f"MixerBlock_{i}" in p:
    blk = p[f"MixerBlock_{i}"]
    y = np_layer_norm(x, blk["LayerNorm_0"]).transpose(0, 2, 1)
    x = x + dense(gelu(dense(y, blk["token_mixing"]["Dense_0"])), blk["token_mixing"]["Dense_1"]).transpose(0, 2, 1)
    y = np_layer_norm(x, blk["LayerNorm_1"])
    x = x + dense(gelu(dense(y, blk["channel_mixing"]["Dense_0"])), blk["channel_mixing"]["Dense_1"])
    i += 1
  return dense(np_layer_norm(x, p["pre_head_layer_norm"]).mean(axis=1), p["head"])


def test_mixer_matches_numpy_reference():
  model, images = tiny("mixer"), images_of((2, 16, 16, 3))
  variables = random_variables(model, images)
  ref = np_mixer(np.asarray(images, np.float64), to_numpy(variables["params"]), patch=4)
  assert np.abs(ref).max() > 0.1
  np.testing.assert_allclose(eval_fn(model)(variables, images), ref, rtol=1e-4, atol=1e-4)


def np_batch_norm(x, p, s):
  return (x - s["mean"]) / np.sqrt(s["var"] + 1e-5) * p["scale"] + p["bias"]


def np_depthwise(x, kernel, *, stride):
  """3x3 depthwise convolution with symmetric padding 1 (timm's, also at stride 2)."""
  x = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
  ho, wo = (x.shape[1] - 3) // stride + 1, (x.shape[2] - 3) // stride + 1
  return sum(
    x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride] * kernel[i, j, 0]
    for i in range(3)
    for j in range(3)
  )


def np_pool(x):
  return (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) / 4


def np_mbconv(x, p, s, *, stride):
  shortcut = (
    np_conv(np_pool(x), p["shortcut"]["expand"]["kernel"]) + p["shortcut"]["expand"]["bias"] if stride == 2 else x
  )
  y = np_batch_norm(x, p["pre_norm"], s["pre_norm"])
  y = gelu(np_batch_norm(y @ p["conv1_1x1"]["kernel"][0, 0], p["norm1"], s["norm1"]))
  y = gelu(np_batch_norm(np_depthwise(y, p["conv2_kxk"]["kernel"], stride=stride), p["norm2"], s["norm2"]))
  gate = dense(silu(dense(y.mean(axis=(1, 2), keepdims=True), p["se"]["fc1"])), p["se"]["fc2"])
  y = y / (1 + np.exp(-gate))
  return shortcut + y @ p["conv3_1x1"]["kernel"][0, 0] + p["conv3_1x1"]["bias"]


def np_coat_transformer(x, p, *, stride, dim_head):
  y = np_layer_norm(x, p["norm1"])
  if stride == 2:
    x = np_conv(np_pool(x), p["shortcut"]["expand"]["kernel"]) + p["shortcut"]["expand"]["bias"]
    y = np_pool(y)
  b, h, w, _ = y.shape
  c = x.shape[-1]
  heads = c // dim_head
  # qkv output channels are (head, q/k/v, head_dim).
  q, k, v = (
    dense(y.reshape(b, h * w, -1), p["attn"]["qkv"]).reshape(b, h * w, heads, 3, dim_head).transpose(3, 0, 2, 1, 4)
  )
  logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dim_head) + rel_bias(
    p["attn"]["rel_pos"]["relative_position_bias_table"], h, w
  )
  y = (softmax(logits) @ v).transpose(0, 2, 1, 3).reshape(b, h, w, c)
  x = x + dense(y, p["attn"]["proj"])
  return x + dense(gelu(dense(np_layer_norm(x, p["norm2"]), p["mlp"]["fc1"])), p["mlp"]["fc2"])


def np_coatnet(images, p, s, *, kinds="CCTT", dim_head=8):
  x = np_conv(images, p["stem"]["conv1"]["kernel"], stride=2, padding=(1, 1))
  x = gelu(np_batch_norm(x, p["stem"]["norm1"], s["stem"]["norm1"]))
  x = np_conv(x, p["stem"]["conv2"]["kernel"], padding=(1, 1))
  for i, kind in enumerate(kinds):
    j = 0
    while f"blocks_{j}" in p[f"stages_{i}"]:
      blk, stride = p[f"stages_{i}"][f"blocks_{j}"], 2 if j == 0 else 1
      if kind == "C":
        x = np_mbconv(x, blk, s[f"stages_{i}"][f"blocks_{j}"], stride=stride)
      else:
        x = np_coat_transformer(x, blk, stride=stride, dim_head=dim_head)
      j += 1
  x = np.tanh(dense(np_layer_norm(x.mean(axis=(1, 2)), p["final_norm"]), p["pre_head"]))
  return dense(x, p["head"])


def coatnet_reference(variables, images):
  v = to_numpy(variables)
  return np_coatnet(np.asarray(images, np.float64), v["params"], v["batch_stats"])


def test_coatnet_matches_numpy_reference():
  model, images = tiny("coatnet"), images_of((2, 64, 64, 3))
  variables = random_variables(model, images)
  ref = coatnet_reference(variables, images)
  assert np.abs(ref).max() > 0.1
  np.testing.assert_allclose(eval_fn(model)(variables, images), ref, rtol=1e-4, atol=1e-4)


def np_vit_tokens(images, p, *, patch, tokens, exact_gelu=False):
  """The encoder output of a ViT (tanh GELU as vit.py's default, or timm's exact one) with the given prefix tokens
  (`cls`, `dist`)."""
  x = np_conv(images, p["embedding"]["kernel"], stride=patch, padding=(0, 0)) + p["embedding"]["bias"]
  x = x.reshape(x.shape[0], -1, x.shape[-1])
  x = np.concatenate([*(np.repeat(p[t], x.shape[0], axis=0) for t in tokens), x], axis=1)
  t = p["Transformer"]
  x = x + t["posembed_input"]["pos_embedding"]
  i = 0
  while f"encoderblock_{i}" in t:
    blk = t[f"encoderblock_{i}"]
    y = np_layer_norm(x, blk["LayerNorm_0"])
    x = x + np_attention(y, y, blk["MultiHeadDotProductAttention_0"])
    y, mlp = np_layer_norm(x, blk["LayerNorm_1"]), blk["MlpBlock_0"]
    x = x + (dense(gelu(dense(y, mlp["Dense_0"])), mlp["Dense_1"]) if exact_gelu else np_mlp(y, mlp))
    i += 1
  return np_layer_norm(x, t["encoder_norm"])


def deit_reference(variables, images):
  p = to_numpy(variables["params"])
  x = np_vit_tokens(np.asarray(images, np.float64), p, patch=4, tokens=("cls", "dist"), exact_gelu=True)
  return dense(x[:, 0], p["head"]), dense(x[:, 1], p["head_dist"])


def test_deit_averages_both_heads_and_train_sows_each_head():
  model, images = tiny("deit"), images_of((2, 16, 16, 3))
  variables = random_variables(model, images)
  assert variables["params"]["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 16 + 2, 128)
  cls_logits, dist_logits = deit_reference(variables, images)
  assert np.abs(cls_logits - dist_logits).max() > 0.1
  np.testing.assert_allclose(eval_fn(model)(variables, images), (cls_logits + dist_logits) / 2, rtol=1e-4, atol=1e-4)
  logits, state = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["intermediates"]))(variables, images)
  np.testing.assert_allclose(logits, (cls_logits + dist_logits) / 2, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(state["intermediates"]["class_logits"][0], cls_logits, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(state["intermediates"]["distill_logits"][0], dist_logits, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# DeiT's distillation objective.


def test_distillation_trains_the_class_head_on_labels_and_the_distillation_head_on_the_teacher():
  model, images = tiny("deit"), images_of((4, 16, 16, 3))
  variables = random_variables(model, images)
  labels = jax.nn.one_hot(jnp.array([0, 1, 2, 3]), 5)
  teacher = jax.random.normal(jax.random.key(3), (4, 5))
  config = ml_collections.ConfigDict({"kind": "hard", "alpha": 0.5, "temperature": 1.0})
  loss_fn = objectives.distillation_loss(config, losses.softmax_cross_entropy)
  forward = objectives.Forward(model.apply, {})

  def loss(heads, labels, teacher_logits):
    objective = objectives.distillation(loss_fn, lambda _: teacher_logits)
    params = {**variables["params"], **heads}
    return objective(forward, params, {"image": images, "labels": labels}, jax.random.key(0))[0]

  cls_logits, dist_logits = deit_reference(variables, images)
  ce = lambda logits, targets: -(np.asarray(targets) * jax.nn.log_softmax(logits)).sum(-1).mean()  # noqa: E731
  expected = 0.5 * ce(cls_logits, labels) + 0.5 * ce(dist_logits, jax.nn.one_hot(teacher.argmax(-1), 5))
  # Each head learns from one signal: other labels leave head_dist's gradient alone, another teacher head's.
  value_and_grad = jax.jit(jax.value_and_grad(loss))
  heads = {k: variables["params"][k] for k in ("head", "head_dist")}
  value, base = value_and_grad(heads, labels, teacher)
  np.testing.assert_allclose(value, expected, rtol=1e-4)
  _, other_labels = value_and_grad(heads, labels[::-1], teacher)
  _, other_teacher = value_and_grad(heads, labels, -teacher)
  np.testing.assert_allclose(other_labels["head_dist"]["kernel"], base["head_dist"]["kernel"], atol=1e-6)
  np.testing.assert_allclose(other_teacher["head"]["kernel"], base["head"]["kernel"], atol=1e-6)
  assert np.abs(other_labels["head"]["kernel"] - base["head"]["kernel"]).max() > 1e-3
  assert np.abs(other_teacher["head_dist"]["kernel"] - base["head_dist"]["kernel"]).max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# timm `.safetensors` files, written here in timm's layout from the reference weights.


def torch_linear(p, name):
  """A Flax Dense as torch Linear entries `name.weight` (out, in) and `name.bias`."""
  return {f"{name}.weight": p["kernel"].T, **({f"{name}.bias": p["bias"]} if "bias" in p else {})}


def torch_conv(p, name):
  return {f"{name}.weight": p["kernel"].transpose(3, 2, 0, 1), **({f"{name}.bias": p["bias"]} if "bias" in p else {})}


def torch_pointwise(p, name):
  """A Flax Dense as a torch 1x1 Conv2d (out, in, 1, 1)."""
  return {f"{name}.weight": p["kernel"].T[:, :, None, None], f"{name}.bias": p["bias"]}


def torch_norm(p, name):
  return {f"{name}.weight": p["scale"], f"{name}.bias": p["bias"]}


def torch_batch_norm(p, s, name):
  stats = {f"{name}.running_mean": s["mean"], f"{name}.running_var": s["var"], f"{name}.num_batches_tracked": 0}
  return {**torch_norm(p, name), **stats}


def timm_vit_state(v, *, dist=False):
  p = v["params"]
  out = {**torch_conv(p["embedding"], "patch_embed.proj"), "cls_token": p["cls"]}
  out["pos_embed"] = p["Transformer"]["posembed_input"]["pos_embedding"]
  if dist:
    out.update(dist_token=p["dist"], **torch_linear(p["head_dist"], "head_dist"))
  i = 0
  while f"encoderblock_{i}" in p["Transformer"]:
    blk, name = p["Transformer"][f"encoderblock_{i}"], f"blocks.{i}"
    attn = blk["MultiHeadDotProductAttention_0"]
    dim = attn["query"]["kernel"].shape[0]
    qkv = [attn[k]["kernel"].reshape(dim, dim).T for k in ("query", "key", "value")]
    out[f"{name}.attn.qkv.weight"] = np.concatenate(qkv)
    out[f"{name}.attn.qkv.bias"] = np.concatenate([attn[k]["bias"].reshape(-1) for k in ("query", "key", "value")])
    out[f"{name}.attn.proj.weight"] = attn["out"]["kernel"].reshape(dim, dim).T
    out[f"{name}.attn.proj.bias"] = attn["out"]["bias"]
    out.update(torch_norm(blk["LayerNorm_0"], f"{name}.norm1"), **torch_norm(blk["LayerNorm_1"], f"{name}.norm2"))
    out.update(torch_linear(blk["MlpBlock_0"]["Dense_0"], f"{name}.mlp.fc1"))
    out.update(torch_linear(blk["MlpBlock_0"]["Dense_1"], f"{name}.mlp.fc2"))
    i += 1
  return {**out, **torch_norm(p["Transformer"]["encoder_norm"], "norm"), **torch_linear(p["head"], "head")}


def timm_swin_state(v):
  p = v["params"]
  out = {
    **torch_conv(p["patch_embed"]["proj"], "patch_embed.proj"),
    **torch_norm(p["patch_embed"]["norm"], "patch_embed.norm"),
  }
  for i in range(2):
    stage = p[f"layers_{i}"]
    if "downsample" in stage:
      out.update(torch_norm(stage["downsample"]["norm"], f"layers.{i}.downsample.norm"))
      out.update(torch_linear(stage["downsample"]["reduction"], f"layers.{i}.downsample.reduction"))
    for j in range(2):
      blk, name = stage[f"blocks_{j}"], f"layers.{i}.blocks.{j}"
      out[f"{name}.attn.relative_position_bias_table"] = blk["attn"]["relative_position_bias_table"]
      out.update(torch_norm(blk["norm1"], f"{name}.norm1"), **torch_norm(blk["norm2"], f"{name}.norm2"))
      for module in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
        a, b = module.split(".")
        out.update(torch_linear(blk[a][b], f"{name}.{module}"))
  return {**out, **torch_norm(p["norm"], "norm"), **torch_linear(p["head"], "head.fc")}


def timm_mixer_state(v):
  p = v["params"]
  out = {
    **torch_conv(p["stem"], "stem.proj"),
    **torch_norm(p["pre_head_layer_norm"], "norm"),
    **torch_linear(p["head"], "head"),
  }
  for i in range(2):
    blk, name = p[f"MixerBlock_{i}"], f"blocks.{i}"
    out.update(torch_norm(blk["LayerNorm_0"], f"{name}.norm1"), **torch_norm(blk["LayerNorm_1"], f"{name}.norm2"))
    for mixing, torch_name in (("token_mixing", "mlp_tokens"), ("channel_mixing", "mlp_channels")):
      out.update(torch_linear(blk[mixing]["Dense_0"], f"{name}.{torch_name}.fc1"))
      out.update(torch_linear(blk[mixing]["Dense_1"], f"{name}.{torch_name}.fc2"))
  return out


def timm_coatnet_state(v):
  p, s = v["params"], v["batch_stats"]
  out = {**torch_conv(p["stem"]["conv1"], "stem.conv1"), **torch_conv(p["stem"]["conv2"], "stem.conv2")}
  out.update(torch_batch_norm(p["stem"]["norm1"], s["stem"]["norm1"], "stem.norm1"))
  for i, kind in enumerate("CCTT"):
    for j, blk in enumerate(p[f"stages_{i}"][f"blocks_{j}"] for j in range(len(p[f"stages_{i}"]))):
      name = f"stages.{i}.blocks.{j}"
      if "shortcut" in blk:
        out.update(torch_conv(blk["shortcut"]["expand"], f"{name}.shortcut.expand"))
      if kind == "C":
        stats = s[f"stages_{i}"][f"blocks_{j}"]
        for norm in ("pre_norm", "norm1", "norm2"):
          out.update(torch_batch_norm(blk[norm], stats[norm], f"{name}.{norm}"))
        for conv in ("conv1_1x1", "conv2_kxk", "conv3_1x1"):
          out.update(torch_conv(blk[conv], f"{name}.{conv}"))
        out.update(
          torch_pointwise(blk["se"]["fc1"], f"{name}.se.fc1"), **torch_pointwise(blk["se"]["fc2"], f"{name}.se.fc2")
        )
      else:
        out.update(torch_norm(blk["norm1"], f"{name}.norm1.norm" if j == 0 else f"{name}.norm1"))
        out.update(torch_norm(blk["norm2"], f"{name}.norm2"))
        table = blk["attn"]["rel_pos"]["relative_position_bias_table"]
        out[f"{name}.attn.rel_pos.relative_position_bias_table"] = table
        for module in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
          a, b = module.split(".")
          out.update(torch_pointwise(blk[a][b], f"{name}.{module}"))
  out.update(torch_norm(p["final_norm"], "head.norm"), **torch_linear(p["pre_head"], "head.pre_logits.fc"))
  return {**out, **torch_linear(p["head"], "head.fc")}


def vit_reference(variables, images):
  p = to_numpy(variables["params"])
  return dense(np_vit_tokens(np.asarray(images, np.float64), p, patch=4, tokens=("cls",))[:, 0], p["head"])


FAMILIES = {
  "vit": (timm_vit_state, vit_reference, (16,)),
  "deit": (functools.partial(timm_vit_state, dist=True), lambda v, x: sum(deit_reference(v, x)) / 2, (16,)),
  "swin": (timm_swin_state, swin_reference, (24, 12)),
  "mixer": (timm_mixer_state, lambda v, x: np_mixer(np.asarray(x, np.float64), to_numpy(v["params"]), patch=4), (16,)),
  "coatnet": (timm_coatnet_state, coatnet_reference, (64,)),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_timm_safetensors_load_and_give_the_reference_logits(family, tmp_path):
  to_state, reference, sizes = FAMILIES[family]
  model = tiny(family)
  for size in sizes:
    images = images_of((2, size, size, 3))
    variables = random_variables(model, images, seed=size)
    state = {k: np.ascontiguousarray(v, np.float32) for k, v in to_state(jax.tree.map(np.asarray, variables)).items()}
    path = str(tmp_path / f"{family}{size}.safetensors")
    safetensors.numpy.save_file(state, path)
    loaded, _ = transfer.load_variables(path, abstract_variables(model, images))
    for key, value in flat(loaded).items():
      np.testing.assert_array_equal(value, flat(variables)[key], err_msg=key)
    np.testing.assert_allclose(eval_fn(model)(loaded, images), reference(variables, images), rtol=1e-4, atol=1e-4)


def test_timm_file_keys_the_model_lacks_are_reported(tmp_path):
  model, images = tiny("mixer"), images_of((1, 16, 16, 3))
  state = timm_mixer_state(jax.tree.map(np.asarray, random_variables(model, images)))
  path = str(tmp_path / "extra.safetensors")
  safetensors.numpy.save_file({**state, "blocks.0.ls1.gamma": np.ones(8, np.float32)}, path)
  with pytest.raises(ValueError, match="blocks.0.ls1.gamma"):
    transfer.load_variables(path, abstract_variables(model, images))


def test_public_mixer_npz_names_load_with_the_npz_importer(tmp_path):
  model, images = tiny("mixer"), images_of((1, 16, 16, 3))
  variables = random_variables(model, images)
  path = str(tmp_path / "mixer.npz")
  np.savez(path, **flat(variables["params"]))
  assert {"stem/kernel", "MixerBlock_1/token_mixing/Dense_0/kernel", "pre_head_layer_norm/scale"} <= set(
    flat(variables["params"])
  )
  loaded = transfer.load_pretrained(path, abstract_variables(model, images)["params"], dont_load=())
  for key, value in flat(loaded).items():
    np.testing.assert_array_equal(value, flat(variables["params"])[key], err_msg=key)


def test_timm_vit_converter_maps_registers_qk_norm_and_layer_scale():
  rng = np.random.default_rng(0)
  dim, heads, head_dim = 32, 4, 8
  state = {
    "patch_embed.proj.weight": rng.normal(size=(dim, 3, 4, 4)),
    "reg_token": rng.normal(size=(1, 4, dim)),
    "blocks.0.attn.qkv.weight": rng.normal(size=(3 * dim, dim)),
    "blocks.0.attn.proj.weight": rng.normal(size=(dim, dim)),
    "blocks.0.attn.proj.bias": rng.normal(size=dim),
    "blocks.0.attn.q_norm.weight": rng.normal(size=head_dim),
    "blocks.0.attn.q_norm.bias": rng.normal(size=head_dim),
    "blocks.0.ls1.gamma": rng.normal(size=dim),
    **{f"blocks.0.{m}.{p}": rng.normal(size=dim) for m in ("norm1", "norm2") for p in ("weight", "bias")},
    **{f"blocks.0.mlp.fc{i}.weight": rng.normal(size=(dim, dim)) for i in (1, 2)},
  }
  out = timm_convert.vit.convert(state)
  block = "params/Transformer/encoderblock_0"
  assert out["params/registers"].shape == (1, 4, dim)
  # The head count comes from the q-norm width; head h's query kernel is rows h*8:(h+1)*8 of the fused weight.
  query = out[f"{block}/MultiHeadDotProductAttention_0/query/kernel"]
  assert query.shape == (dim, heads, head_dim)
  np.testing.assert_array_equal(query[:, 1], state["blocks.0.attn.qkv.weight"][8:16].T)
  np.testing.assert_array_equal(out[f"{block}/MultiHeadDotProductAttention_0/query/bias"], np.zeros((heads, head_dim)))
  np.testing.assert_array_equal(
    out[f"{block}/MultiHeadDotProductAttention_0/out/kernel"][2], state["blocks.0.attn.proj.weight"][:, 16:24].T
  )
  np.testing.assert_array_equal(
    out[f"{block}/MultiHeadDotProductAttention_0/query_norm/scale"], state["blocks.0.attn.q_norm.weight"]
  )
  np.testing.assert_array_equal(out[f"{block}/LayerScale_0/scale"], state["blocks.0.ls1.gamma"])


def test_timm_vit_converter_fills_the_class_slot_and_folds_register_positions():
  rng = np.random.default_rng(0)
  base = {"patch_embed.proj.weight": rng.normal(size=(8, 3, 4, 4)), "blocks.0.attn.qkv.weight": np.zeros((24, 8))}
  base.update(cls_token=rng.normal(size=(1, 1, 8)), reg_token=rng.normal(size=(1, 2, 8)))
  no_embed_class = timm_convert.vit._posemb({**base, "pos_embed": rng.normal(size=(1, 16, 8))})
  table = no_embed_class["params/Transformer/posembed_input/pos_embedding"]
  assert table.shape == (1, 17, 8) and not table[0, 0].any()
  pos = rng.normal(size=(1, 1 + 2 + 16, 8))
  folded = timm_convert.vit._posemb({**base, "pos_embed": pos})
  np.testing.assert_array_equal(folded["params/registers"], base["reg_token"] + pos[:, 1:3])
  np.testing.assert_array_equal(folded["params/Transformer/posembed_input/pos_embedding"], pos[:, [0, *range(3, 19)]])
