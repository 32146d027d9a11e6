"""NaFlex ViT: timm's definitions, position tables resampled as torch/PIL do, padding that changes nothing, a numpy
forward pass, timm-format checkpoints, and the aspect-preserving resize + patchify preprocessing."""

import flax
import numpy as np
import pytest
import safetensors.numpy
import tensorflow as tf
from PIL import Image

from tests.support import evaluate, flat, np_attention, np_layer_norm, np_mlp, random_variables, to_numpy
from vitjax import models, transfer
from vitjax.data import patches, preprocess
from vitjax.models import naflexvit, registry
from vitjax.transfer.timm import naflexvit as timm_naflexvit

# timm 1.0.31: sum(p.numel() for p in timm.create_model(name, num_classes=1000).parameters()).
TIMM_COUNTS = {
  "naflexvit_base_patch16_gap": 86_633_704,
  "naflexvit_base_patch16_par_gap": 86_633_704,
  "naflexvit_base_patch16_parfac_gap": 86_461_672,
  "naflexvit_base_patch16_map": 93_718_504,
  "naflexvit_so150m2_patch16_reg1_gap": 136_058_728,
  "naflexvit_so150m2_patch16_reg1_map": 142_457_320,
  "naflexvit_base_patch16_siglip": 93_699_304,
  "naflexvit_so400m_patch16_siglip": 429_041_064,
}
TINY = dict(hidden_size=32, mlp_dim=64, num_heads=4, num_layers=2, patch_size=4, posemb_grid=(4, 6))
PATCH_DIM = 4 * 4 * 3


def test_every_timm_definition_is_registered_with_timm_s_count():
  # test_registry checks each count against the built model's parameters (shapes only).
  assert {e.name: e.params for e in registry.entries() if e.family.name == "naflexvit"} == TIMM_COUNTS


def naflex_batch(grids, seq_len, *, seed=0, garbage=True):
  """Random patches of images with patch `grids` (h, w), row-major, padded to `seq_len`; padding holds random
  patches and coordinates (garbage) or zeros, as timm's collator writes."""
  rng = np.random.default_rng(seed)
  batch = {"patches": [], "patch_coord": [], "patch_valid": []}
  for h, w in grids:
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([rows.ravel(), cols.ravel()], -1)
    pad = seq_len - h * w
    pad_coords = rng.integers(0, 9, (pad, 2)) if garbage else np.zeros((pad, 2), int)
    batch["patch_coord"].append(np.concatenate([coords, pad_coords]).astype(np.int32))
    batch["patches"].append(rng.uniform(-1, 1, (seq_len, PATCH_DIM)).astype(np.float32))
    if not garbage:
      batch["patches"][-1][h * w :] = 0
    batch["patch_valid"].append(np.arange(seq_len) < h * w)
  return {k: np.stack(v) for k, v in batch.items()}


def resized_pil(table, out_h, out_w, interpolation):
  """`table` (gh, gw, D) resized channel by channel by PIL on float images (which torch's antialias mode copies)."""
  method = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[interpolation]
  channels = [np.asarray(Image.fromarray(table[..., c]).resize((out_w, out_h), method)) for c in range(table.shape[-1])]
  return np.stack(channels, -1)


def resized_linear(table, out_len):
  """(g, D) resampled linearly with half-pixel centres, edge values held (torch's linear, align_corners=False)."""
  source = np.clip((np.arange(out_len) + 0.5) * len(table) / out_len - 0.5, 0, len(table) - 1)
  return np.stack([np.interp(source, np.arange(len(table)), table[:, c]) for c in range(table.shape[1])], -1)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_antialiased_weights_resample_as_pil(interpolation):
  table = np.random.default_rng(0).normal(size=(16, 16, 3)).astype(np.float32)
  grids = [(3, 5), (20, 7), (16, 16), (1, 30), (40, 2)]  # Down, up, the same, and mixed in each axis.
  sides = [n for grid in grids for n in grid]
  # One call for every side of every grid: outputs 0..n-1 of a resize to n.
  index, size = np.concatenate([np.arange(n) for n in sides]), np.concatenate([np.full(n, n) for n in sides])
  weights = np.split(np.asarray(naflexvit.antialias_weights(index, size, 16, interpolation)), np.cumsum(sides)[:-1])
  for k, (h, w) in enumerate(grids):
    ours = np.einsum("yi,xj,ijc->yxc", weights[2 * k], weights[2 * k + 1], table)
    np.testing.assert_allclose(ours, resized_pil(table, h, w, interpolation), atol=2e-6, err_msg=f"{h}x{w}")


@pytest.mark.parametrize("size", [3, 7, 16, 40])
def test_linear_weights_resample_as_numpy_interp(size):
  table = np.random.default_rng(1).normal(size=(16, 4))
  weights = np.asarray(naflexvit.linear_weights(np.arange(size), np.full(size, size), 16))
  np.testing.assert_allclose(weights @ table, resized_linear(table, size), atol=1e-5)


def np_naflex(params, batch, options):
  """The NaFlex ViT of `options` in numpy, on each image's valid patches alone (no padding, no mask)."""
  logits = []
  for pixels, coords, valid in zip(batch["patches"], batch["patch_coord"], batch["patch_valid"]):
    pixels, coords = pixels[valid].astype(np.float64), coords[valid]
    h, w = coords.max(0) + 1
    x = pixels @ params["embedding"]["kernel"] + params["embedding"]["bias"]
    if options.get("posemb") == "factorized":
      side_h, side_w = (max(h, w),) * 2 if options.get("posemb_keep_aspect") else (h, w)
      rows, cols = resized_linear(params["pos_embedding_y"], side_h), resized_linear(params["pos_embedding_x"], side_w)
      x = x + rows[coords[:, 0]] + cols[coords[:, 1]]
    else:
      side_h, side_w = (max(h, w),) * 2 if options.get("posemb_keep_aspect") else (h, w)
      table = resized_pil(params["pos_embedding"].astype(np.float32), side_h, side_w, options["posemb_interpolation"])
      x = x + table[coords[:, 0], coords[:, 1]]
    prefix = [params["cls"][0]] if options["classifier"] == "token" else []
    prefix += [params["registers"][0]] if "registers" in params else []
    x = np.concatenate([*prefix, x])[None]
    for i in range(options["num_layers"]):
      p = params["Transformer"][f"encoderblock_{i}"]
      x = x + p["LayerScale_0"]["scale"] * np_attention(
        *[np_layer_norm(x, p["LayerNorm_0"])] * 2, p["MultiHeadDotProductAttention_0"]
      )
      x = x + p["LayerScale_1"]["scale"] * np_mlp(np_layer_norm(x, p["LayerNorm_1"]), p["MlpBlock_0"])
    if "encoder_norm" in params["Transformer"]:
      x = np_layer_norm(x, params["Transformer"]["encoder_norm"])
    patch_tokens = x[:, sum(map(len, prefix)) :]
    if options["classifier"] == "token":
      pooled = x[:, 0]
    elif options["classifier"] == "gap":
      pooled = patch_tokens.mean(1)
    else:
      head = params["MAPHead_0"]
      y = np_attention(head["probe"], patch_tokens, head["MultiHeadDotProductAttention_0"])
      pooled = (y + np_mlp(np_layer_norm(y, head["LayerNorm_0"]), head["MlpBlock_0"]))[:, 0]
    if "fc_norm" in params:
      pooled = np_layer_norm(pooled, params["fc_norm"])
    logits.append(pooled[0] @ params["head"]["kernel"] + params["head"]["bias"])
  return np.stack(logits)


OPTIONS = {
  "gap": dict(classifier="gap", fc_norm=True, num_registers=2, posemb_interpolation="bicubic"),
  "map": dict(classifier="map", fc_norm=False, num_registers=1, posemb_interpolation="bilinear"),
  "token": dict(classifier="token", posemb="factorized", posemb_keep_aspect=True, attention="explicit"),
  "gap_keep_aspect": dict(classifier="gap", posemb_keep_aspect=True, posemb_interpolation="bicubic"),
}


@pytest.mark.parametrize("case", list(OPTIONS))
def test_matches_numpy_forward_and_padding_changes_no_logit(case):
  options = dict(TINY, **OPTIONS[case], layerscale=0.5, gelu_approximate=True)
  model = models.build("naflexvit_micro4", num_classes=5, **options)
  # Wide, tall, the stored grid, a strip (15, 14, 24, 9 patches) and none (a padded batch's filler).
  grids = [(3, 5), (7, 2), (4, 6), (1, 9), (0, 0)]
  short, long = naflex_batch(grids, 24, seed=2), naflex_batch(grids, 40, seed=3)
  for key in ("patches", "patch_coord"):  # The same valid patches, other padding.
    long[key][:, :24] = np.where(short["patch_valid"][..., None], short[key], long[key][:, :24])
  variables = random_variables(model, short)
  logits = np.asarray(evaluate(model, variables, short))
  # The filler has no patch: its logits are finite, whatever they are.
  assert np.isfinite(logits[-1]).all()
  np.testing.assert_allclose(np.asarray(evaluate(model, variables, long))[:-1], logits[:-1], atol=2e-5)
  reference = np_naflex(
    to_numpy(variables["params"]), {k: v[:-1] for k, v in short.items()}, dict(options, num_layers=2)
  )
  np.testing.assert_allclose(logits[:-1], reference, atol=2e-4, rtol=1e-4)


def test_images_are_their_full_patch_grid():
  model = models.build("naflexvit_micro4", num_classes=3, **TINY)
  images = np.random.default_rng(4).uniform(-1, 1, (2, 12, 20, 3)).astype(np.float32)
  batch = naflexvit.patchify(images, 4)
  assert batch["patches"].shape == (2, 15, PATCH_DIM) and bool(batch["patch_valid"].all())
  np.testing.assert_array_equal(batch["patches"][1, 6], images[1, 4:8, 4:8].reshape(-1))  # Row 1, column 1.
  np.testing.assert_array_equal(batch["patch_coord"][0, 6], [1, 1])
  variables = random_variables(model, images)
  np.testing.assert_allclose(evaluate(model, variables, images), evaluate(model, variables, batch), atol=1e-6)


def timm_state(params) -> dict[str, np.ndarray]:
  """timm's `NaFlexVit.state_dict()` holding `params`, written from timm's module names."""
  p = flat(to_numpy(params))
  dim = p["embedding/kernel"].shape[1]
  state = {"embeds.proj.weight": p["embedding/kernel"].T, "embeds.proj.bias": p["embedding/bias"]}
  for ours, theirs in (("registers", "reg_token"), ("cls", "cls_token"), ("pos_embedding", "pos_embed")):
    if ours in p:
      state[f"embeds.{theirs}"] = p[ours] if ours != "pos_embedding" else p[ours][None]
  for axis in ("y", "x"):
    if f"pos_embedding_{axis}" in p:
      state[f"embeds.pos_embed_{axis}"] = p[f"pos_embedding_{axis}"][None]
  for i in range(2):
    b, t = f"Transformer/encoderblock_{i}", f"blocks.{i}"
    attn = f"{b}/MultiHeadDotProductAttention_0"
    state[f"{t}.attn.qkv.weight"] = np.concatenate(
      [p[f"{attn}/{n}/kernel"].reshape(dim, dim).T for n in "query key value".split()]
    )
    if f"{attn}/query/bias" in p:
      state[f"{t}.attn.qkv.bias"] = np.concatenate(
        [p[f"{attn}/{n}/bias"].reshape(-1) for n in ("query", "key", "value")]
      )
    state[f"{t}.attn.proj.weight"] = p[f"{attn}/out/kernel"].reshape(dim, dim).T
    state[f"{t}.attn.proj.bias"] = p[f"{attn}/out/bias"]
    for ours, theirs in (("LayerNorm_0", "norm1"), ("LayerNorm_1", "norm2")):
      state[f"{t}.{theirs}.weight"], state[f"{t}.{theirs}.bias"] = p[f"{b}/{ours}/scale"], p[f"{b}/{ours}/bias"]
    state[f"{t}.ls1.gamma"], state[f"{t}.ls2.gamma"] = p[f"{b}/LayerScale_0/scale"], p[f"{b}/LayerScale_1/scale"]
    for k in (0, 1):
      state[f"{t}.mlp.fc{k + 1}.weight"] = p[f"{b}/MlpBlock_0/Dense_{k}/kernel"].T
      state[f"{t}.mlp.fc{k + 1}.bias"] = p[f"{b}/MlpBlock_0/Dense_{k}/bias"]
  for ours, theirs in (
    ("Transformer/encoder_norm", "norm"),
    ("fc_norm", "fc_norm"),
    ("MAPHead_0/LayerNorm_0", "attn_pool.norm"),
  ):
    if f"{ours}/scale" in p:
      state[f"{theirs}.weight"], state[f"{theirs}.bias"] = p[f"{ours}/scale"], p[f"{ours}/bias"]
  if "MAPHead_0/probe" in p:
    pool = "MAPHead_0/MultiHeadDotProductAttention_0"
    state["attn_pool.latent"] = p["MAPHead_0/probe"]
    state["attn_pool.q.weight"], state["attn_pool.q.bias"] = (
      p[f"{pool}/query/kernel"].reshape(dim, dim).T,
      p[f"{pool}/query/bias"].reshape(-1),
    )
    state["attn_pool.kv.weight"] = np.concatenate(
      [p[f"{pool}/{n}/kernel"].reshape(dim, dim).T for n in ("key", "value")]
    )
    state["attn_pool.kv.bias"] = np.concatenate([p[f"{pool}/{n}/bias"].reshape(-1) for n in ("key", "value")])
    state["attn_pool.proj.weight"], state["attn_pool.proj.bias"] = (
      p[f"{pool}/out/kernel"].reshape(dim, dim).T,
      p[f"{pool}/out/bias"],
    )
    for k in (0, 1):
      state[f"attn_pool.mlp.fc{k + 1}.weight"] = p[f"MAPHead_0/MlpBlock_0/Dense_{k}/kernel"].T
      state[f"attn_pool.mlp.fc{k + 1}.bias"] = p[f"MAPHead_0/MlpBlock_0/Dense_{k}/bias"]
  state["head.weight"], state["head.bias"] = p["head/kernel"].T, p["head/bias"]
  return {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}


@pytest.mark.parametrize(
  "options",
  [
    dict(classifier="gap", fc_norm=True, num_registers=4, qkv_bias=False),  # As naflexvit_so150m2_*_gap.
    dict(classifier="map", fc_norm=False, num_registers=1, posemb="factorized"),
  ],
)
def test_timm_checkpoint_reproduces_logits_and_publishes_back(options, tmp_path):
  model = models.build("naflexvit_micro4", num_classes=5, **TINY, **options, layerscale=0.1)
  batch = naflex_batch([(3, 5), (6, 2)], 16, seed=5, garbage=False)
  variables = random_variables(model, batch)
  state = timm_state(variables["params"])
  path = str(tmp_path / "model.safetensors")
  safetensors.numpy.save_file(state, path)
  restored, _ = transfer.load_variables(path, variables)
  np.testing.assert_allclose(evaluate(model, restored, batch), evaluate(model, variables, batch), atol=1e-6)
  back = timm_naflexvit.to_timm(timm_naflexvit.convert(state))
  assert sorted(back) == sorted(state)
  for key, value in state.items():
    np.testing.assert_allclose(back[key], value, atol=1e-7, err_msg=key)


# timm 1.0.31's get_image_size_for_seq(image_hw, 16, max_seq_len)[1] // 16 for these images.
TIMM_GRIDS = {
  64: {(120, 300): (5, 12), (400, 130): (13, 4), (210, 190): (8, 8), (40, 500): (2, 25)},
  144: {(120, 300): (8, 18), (400, 130): (20, 7), (210, 190): (13, 11), (40, 500): (3, 38)},
}


@pytest.mark.parametrize("seq_len", list(TIMM_GRIDS))
def test_sequence_grid_is_timm_s(seq_len):
  for (h, w), grid in TIMM_GRIDS[seq_len].items():
    assert tuple(patches.grid_for_seq(h, w, 16, seq_len).numpy()) == grid, (h, w)


def test_patchify_pads_to_the_sequence_length_by_hand():
  image = tf.reshape(tf.range(5 * 7, dtype=tf.float32), (5, 7, 1))  # Pixel (r, c) holds 7 r + c.
  out = patches.patchify_image(image, 2, 20)  # 3 x 4 patches (the image padded to 6 x 8), 8 of padding.
  assert out["patches"].shape == (20, 4) and out["patch_coord"].shape == (20, 2) and out["patch_valid"].shape == (20,)
  np.testing.assert_array_equal(out["patches"][0], [0, 1, 7, 8])
  np.testing.assert_array_equal(out["patches"][5], [16, 17, 23, 24])  # Row 1, column 1.
  np.testing.assert_array_equal(out["patches"][11], [34, 0, 0, 0])  # Row 2, column 3: one pixel, then zeros.
  np.testing.assert_array_equal(out["patch_coord"][:5], [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0]])
  np.testing.assert_array_equal(out["patch_valid"], np.arange(20) < 12)
  assert not np.asarray(out["patches"][12:]).any() and not np.asarray(out["patch_coord"][12:]).any()
  with pytest.raises(tf.errors.InvalidArgumentError, match="more patches than max_seq_len"):
    patches.patchify_image(image, 2, 11)


def test_pipeline_ops_feed_the_model_at_the_image_s_aspect_ratio():
  spec = preprocess.parse("resize_to_seq(26, 4)|value_range(-1, 1)|patchify(4, 26)")
  image = tf.cast(tf.random.stateless_uniform((30, 75, 3), (1, 2), 0, 256, tf.int32), tf.uint8)
  packed = spec({"image": image}, tf.constant([0, 0]))["image"]
  assert packed.dtype == tf.float32 and packed.shape == (26, 4 * 4 * 3 + 3)  # Patches, then row, column, validity.
  out = naflexvit.unpack(np.asarray(packed)[None])
  # Scaled by 0.4 (to 12 x 30 pixels) 3 x 8 patches fit, by more 4 x 8 do not: 12 x 32 pixels, 2 of padding.
  np.testing.assert_array_equal(out["patch_valid"][0], np.arange(26) < 24)
  np.testing.assert_array_equal(out["patch_coord"][0, 8:10], [[1, 0], [1, 1]])  # Row-major: row 1 starts at 8.
  resized = tf.image.resize(image, (12, 32), "bicubic", antialias=True)
  resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.float32) / 127.5 - 1
  model = models.build("naflexvit_micro4", num_classes=3, **TINY)
  variables = random_variables(model, out)
  logits = evaluate(model, variables, resized.numpy()[None])
  np.testing.assert_allclose(evaluate(model, variables, out), logits, atol=1e-5)
  np.testing.assert_allclose(evaluate(model, variables, np.asarray(packed)[None]), logits, atol=1e-5)


def test_a_plain_vit_checkpoint_starts_a_naflex_vit_with_the_vit_s_logits(tmp_path):
  """Same encoder, class-token readout and a table at the image's own grid: the NaFlex ViT is the ViT, exactly."""
  images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)  # A 4 x 4 patch grid.
  options = dict(TINY, classifier="token", gelu_approximate=False, posemb_grid=(4, 4))
  vit = models.build("vit_micro4", num_classes=3, **{k: v for k, v in options.items() if k != "posemb_grid"})
  vit_variables = random_variables(vit, images)
  flat_vit = flat(vit_variables["params"])
  flat_vit["Transformer/posembed_input/pos_embedding"] = np.random.default_rng(1).normal(size=(1, 1 + 4 * 4, 32))
  vit_variables = {"params": flax.traverse_util.unflatten_dict(flat_vit, sep="/")}
  np.savez(tmp_path / "vit.npz", **flat_vit)
  naflex = models.build("naflexvit_micro4", num_classes=3, num_registers=0, fc_norm=False, layerscale=None, **options)
  params = transfer.load_pretrained(str(tmp_path / "vit.npz"), random_variables(naflex, images)["params"], dont_load=())
  np.testing.assert_allclose(
    evaluate(naflex, {"params": params}, images), evaluate(vit, vit_variables, images), rtol=1e-4, atol=1e-5
  )
  # timm's design (gap, fc_norm, registers) and the factorised tables load too: resized, moved or kept.
  for posemb in ("learn", "factorized"):
    gap = models.build("naflexvit_micro4", num_classes=3, posemb=posemb, **TINY)
    initial = random_variables(gap, images, seed=2)["params"]
    loaded = transfer.load_pretrained(str(tmp_path / "vit.npz"), initial)
    np.testing.assert_array_equal(loaded["registers"], initial["registers"])
    np.testing.assert_array_equal(loaded["fc_norm"]["scale"], flat_vit["Transformer/encoder_norm/scale"])
    assert not loaded["head"]["kernel"].any()
    layerscales = [v for k, v in flat(loaded).items() if "LayerScale" in k]
    assert layerscales and all((v == 1).all() for v in layerscales)  # The ViT's blocks as they were.
