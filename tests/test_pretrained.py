"""Public checkpoint import: every layout of GUIDE section 3 written from a model's own params, loaded back."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import scipy.ndimage

from vitjax import checkpoints, models, transfer
from vitjax.train.state import TrainState

VIT = dict(num_layers=2, hidden_size=32, mlp_dim=64, num_heads=2)
RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)


def _init(model, size=32):
  return jax.jit(functools.partial(model.init, train=False))(jax.random.key(1), jnp.zeros((1, size, size, 3)))["params"]


def _abstract(model, size=32):
  return jax.eval_shape(lambda: _init(model, size))


def _randomized(params):
  """Every parameter random (zero-initialised heads and class tokens would hide mistakes)."""
  rng = np.random.default_rng(7)
  return jax.tree.map(lambda x: (0.5 * rng.normal(size=x.shape)).astype(np.float32), params)


def _flat(params):
  return {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}


def _logits(model, params, images=IMAGES):
  return np.asarray(jax.jit(functools.partial(model.apply, train=False))({"params": params}, images))


def _save_npz(tmp_path, flat, name="ckpt.npz"):
  path = str(tmp_path / name)
  np.savez(path, **flat)
  return path


def _old_names(flat):
  """vit_jax's older files: encoder-block submodules numbered globally."""
  renames = {
    "/MultiHeadDotProductAttention_0/": "/MultiHeadDotProductAttention_1/",
    "/LayerNorm_1/": "/LayerNorm_2/",
    "/MlpBlock_0/": "/MlpBlock_3/",
  }
  out = {}
  for key, value in flat.items():
    for new, old in renames.items():
      key = key.replace(new, old) if "encoderblock" in key else key
    out[key] = value
  return out


def _big_vision(flat, *, stacked):
  """big_vision's layout: `params/` prefix, top-level posemb without a class slot, optionally stacked blocks.

  big_vision adds position embeddings before concatenating the class token, so the model's class-slot embedding
  moves into `cls` to keep the function the same.
  """
  flat = dict(flat)
  posemb = flat.pop("Transformer/posembed_input/pos_embedding")
  flat["cls"] = flat["cls"] + posemb[:, :1]
  flat["pos_embedding"] = posemb[:, 1:]
  if stacked:
    blocks = sorted({k.split("/")[1] for k in flat if k.startswith("Transformer/encoderblock_")})
    rests = sorted({k.split("/", 2)[2] for k in flat if k.startswith("Transformer/encoderblock_0/")})
    for rest in rests:
      flat[f"Transformer/encoderblock/{rest}"] = np.stack([flat.pop(f"Transformer/{b}/{rest}") for b in blocks])
  return {f"params/{k}": v for k, v in flat.items()}


@pytest.fixture(scope="module")
def vit():
  model = models.build("vit_micro8", num_classes=10, **VIT)
  params = _randomized(_init(model))
  return model, params, _logits(model, params)


@pytest.mark.parametrize("layout", ["flax", "old_names", "big_vision", "big_vision_stacked", "old_names_stacked"])
def test_vit_layouts_load_to_identical_logits(vit, tmp_path, layout):
  model, params, expected = vit
  flat = _flat(params)
  files = {
    "flax": lambda: flat,
    "old_names": lambda: _old_names(flat),
    "big_vision": lambda: _big_vision(flat, stacked=False),
    "big_vision_stacked": lambda: _big_vision(flat, stacked=True),
    "old_names_stacked": lambda: _big_vision(_old_names(flat), stacked=True),
  }
  path = _save_npz(tmp_path, files[layout]())
  target = jax.tree.map(np.zeros_like, params)
  loaded = transfer.load_pretrained(path, target, dont_load=())
  np.testing.assert_array_equal(_logits(model, loaded), expected)


def test_hybrid_with_group_norm_stored_as_1x1x1xC(tmp_path):
  model = models.build("r50_vit_b16", num_classes=10, **{**VIT, "num_layers": 1}, resnet_stages=(1,), patch_size=2)
  params = _randomized(_init(model, size=16))
  images = IMAGES[:, :16, :16]
  flat = {k: (v.reshape(1, 1, 1, -1) if "/gn" in f"/{k}" else v) for k, v in _flat(params).items()}
  assert flat["gn_root/scale"].shape == (1, 1, 1, 64) and flat["block1/unit1/gn_proj/bias"].shape == (1, 1, 1, 256)
  path = _save_npz(tmp_path, flat)
  loaded = transfer.load_pretrained(path, jax.tree.map(np.zeros_like, params), dont_load=())
  np.testing.assert_array_equal(_logits(model, loaded, images), _logits(model, params, images))
  _, report = transfer.match_params(
    transfer.read_checkpoint(path)[0], _flat(params), dont_load=(), keep_pre_logits=False
  )
  assert report.reshaped["gn_root/scale"] == "(1, 1, 1, 64) -> (64,)"
  assert len(report.reshaped) == sum("/gn" in f"/{k}" for k in flat)


def test_bit_tf_names(tmp_path):
  model = models.build("bit_r50x1", num_classes=10, stage_sizes=(1,))
  params = _randomized(_init(model))
  tf_names = {}
  for key, value in _flat(params).items():
    key = key.replace("group_norm/scale", "group_norm/gamma").replace("group_norm/bias", "group_norm/beta")
    tf_names[f"resnet/{key}"] = value
  assert "resnet/block1/unit01/a/proj/standardized_conv2d/kernel" in tf_names
  assert "resnet/group_norm/gamma" in tf_names and "resnet/head/conv2d/kernel" in tf_names
  path = _save_npz(tmp_path, tf_names)
  loaded = transfer.load_pretrained(path, jax.tree.map(np.zeros_like, params), dont_load=())
  np.testing.assert_array_equal(_logits(model, loaded), _logits(model, params))

  # The default transfer keeps everything but the head, which restarts at zero kernel and the chosen bias.
  fresh = transfer.load_pretrained(path, params, head_bias_init=-10.0)
  np.testing.assert_array_equal(fresh["head"]["conv2d"]["kernel"], 0.0)
  np.testing.assert_array_equal(fresh["head"]["conv2d"]["bias"], -10.0)
  np.testing.assert_array_equal(
    fresh["block1"]["unit01"]["c"]["group_norm"]["scale"], params["block1"]["unit01"]["c"]["group_norm"]["scale"]
  )


def test_posemb_resize_is_identity_at_the_same_size_and_bilinear_otherwise():
  posemb = RNG.normal(size=(1, 1 + 4 * 4, 8)).astype(np.float32)
  np.testing.assert_array_equal(transfer.resize_posemb(posemb, 17), posemb)
  for side in (6, 3, 1):
    resized = transfer.resize_posemb(posemb, 1 + side * side)
    grid = posemb[0, 1:].reshape(4, 4, 8)
    expected = scipy.ndimage.zoom(grid, (side / 4, side / 4, 1), order=1)
    assert expected.shape == (side, side, 8)
    np.testing.assert_array_equal(resized[:, :1], posemb[:, :1])  # The class token is kept apart.
    np.testing.assert_allclose(resized[0, 1:].reshape(side, side, 8), expected, rtol=1e-5, atol=1e-6)
  # Without a class slot on either side (gap / map models), and between the two conventions.
  no_slot = posemb[:, 1:]
  np.testing.assert_allclose(
    transfer.resize_posemb(no_slot, 36)[0].reshape(6, 6, 8),
    scipy.ndimage.zoom(no_slot[0].reshape(4, 4, 8), (1.5, 1.5, 1), order=1),
    atol=1e-6,
  )
  np.testing.assert_array_equal(transfer.resize_posemb(no_slot, 17)[:, 0], 0.0)
  np.testing.assert_array_equal(transfer.resize_posemb(posemb, 16), no_slot)
  with pytest.raises(ValueError, match="neither a square grid"):
    transfer.resize_posemb(posemb, 20)


def test_fine_tune_at_a_higher_resolution_resizes_and_logs(vit, tmp_path):
  _, params, _ = vit
  path = _save_npz(tmp_path, _flat(params))
  model = models.build("vit_micro8", num_classes=3, **VIT)
  target = _abstract(model, size=48)  # Shapes suffice when every kept key is loaded or a new head.
  loaded = transfer.load_pretrained(path, target)
  posemb = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])
  np.testing.assert_array_equal(
    loaded["Transformer"]["posembed_input"]["pos_embedding"], transfer.resize_posemb(posemb, 37)
  )
  np.testing.assert_array_equal(loaded["head"]["kernel"], np.zeros((32, 3)))
  _, report = transfer.match_params(
    _flat(params), flax.traverse_util.flatten_dict(target, sep="/"), dont_load=(r"head/.*",), keep_pre_logits=False
  )
  assert report.resized == {"Transformer/posembed_input/pos_embedding": "(1, 17, 32) -> (1, 37, 32)"}
  assert set(report.reinitialized) == {"head/kernel", "head/bias"} and set(report.dropped) == {
    "head/kernel",
    "head/bias",
  }
  assert len(report.loaded) == len(jax.tree.leaves(target)) - 2
  out = _logits(model, loaded, RNG.uniform(-1, 1, (2, 48, 48, 3)).astype(np.float32))
  assert out.shape == (2, 3) and np.all(out == 0)  # Zero head kernel and bias.


def test_pre_logits_dropped_or_kept(tmp_path):
  upstream = models.build("vit_micro8", num_classes=10, representation_size=16, **VIT)
  fresh = _init(upstream)
  params = _randomized(fresh)
  path = _save_npz(tmp_path, _flat(params))
  plain = _abstract(models.build("vit_micro8", num_classes=10, **VIT))
  dropped = transfer.load_pretrained(path, plain)
  assert "pre_logits" not in dropped
  kept = transfer.load_pretrained(path, fresh, keep_pre_logits=True, dont_load=())
  np.testing.assert_array_equal(_logits(upstream, kept), _logits(upstream, params))
  reinitialized = transfer.load_pretrained(path, fresh)
  np.testing.assert_array_equal(reinitialized["pre_logits"]["kernel"], fresh["pre_logits"]["kernel"])
  np.testing.assert_array_equal(reinitialized["embedding"]["kernel"], params["embedding"]["kernel"])
  with pytest.raises(ValueError, match=r"pre_logits/\w+ .* is in the checkpoint but not in the model"):
    transfer.load_pretrained(path, plain, keep_pre_logits=True)


def test_another_architecture_fails_naming_the_first_mismatched_key(vit, tmp_path):
  _, params, _ = vit
  path = _save_npz(tmp_path, _flat(params))
  wider = models.build("vit_micro8", num_classes=10, **{**VIT, "hidden_size": 48, "mlp_dim": 96})
  with pytest.raises(
    ValueError,
    match=r"Transformer/encoder_norm/bias has shape \(32,\) in the checkpoint but "
    r"\(48,\) in the model \(and \d+ more",
  ):
    transfer.load_pretrained(path, _abstract(wider))
  deeper = models.build("vit_micro8", num_classes=10, **{**VIT, "num_layers": 3})
  with pytest.raises(ValueError, match=r"Transformer/encoderblock_2/LayerNorm_0/bias \(32,\) is missing"):
    transfer.load_pretrained(path, _abstract(deeper))
  shallower = models.build("vit_micro8", num_classes=10, **{**VIT, "num_layers": 1})
  with pytest.raises(ValueError, match=r"Transformer/encoderblock_1/.* is in the checkpoint but not in the model"):
    transfer.load_pretrained(path, _abstract(shallower))
  bit = models.build("bit_r50x1", num_classes=10, stage_sizes=(1,))
  with pytest.raises(ValueError, match=r"block1/unit01/a/group_norm/bias \(64,\) is missing"):
    transfer.load_pretrained(path, _abstract(bit))
  transposed = {**_flat(params)}
  transposed["Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"] = transposed[
    "Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"
  ].T
  with pytest.raises(
    ValueError,
    match=r"encoderblock_1/MlpBlock_0/Dense_0/kernel has shape \(64, 32\) in the "
    r"checkpoint but \(32, 64\) in the model\. ",
  ):
    transfer.load_pretrained(_save_npz(tmp_path, transposed, "t.npz"), params)


def _train_state(model, params):
  state = TrainState.create(
    apply_fn=model.apply, params=params, tx=optax.adam(1e-3), ema_params=jax.tree.map(lambda x: 2 * x, params)
  )
  grads = jax.tree.map(jnp.ones_like, params)
  return state.apply_gradients(grads=grads)  # Step 1, non-trivial optimizer moments.


def test_orbax_checkpoints_of_this_project(vit, tmp_path):
  model, params, expected = vit
  state = _train_state(model, params)
  workdir = str(tmp_path / "run")
  manager = checkpoints.create_manager(workdir)
  checkpoints.save(manager, state, step=1, meta={"train_seconds": 2.5})
  manager.wait_until_finished()
  target = jax.tree.map(np.zeros_like, params)
  for path in (workdir, f"{workdir}/checkpoints", f"{workdir}/checkpoints/1"):
    loaded = transfer.load_pretrained(path, target, dont_load=())
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(state.params))

  # A params-only pytree saved with Orbax directly.
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(str(tmp_path / "params_only"), params)
  loaded = transfer.load_pretrained(str(tmp_path / "params_only"), target, dont_load=())
  np.testing.assert_array_equal(_logits(model, loaded), expected)

  variables, meta = transfer.load_variables(workdir, {"params": target})
  assert meta == {"train_seconds": 2.5, "step": 1}
  jax.tree.map(np.testing.assert_array_equal, variables["params"], jax.device_get(state.params))
  averaged, _ = transfer.load_variables(workdir, {"params": target}, params_key="ema_params")
  jax.tree.map(np.testing.assert_array_equal, averaged["params"], jax.device_get(state.ema_params))

  # The full state, to continue training: optimizer moments and step come back too.
  abstract = jax.eval_shape(lambda: _train_state(model, params))
  resumed = checkpoints.load_state(workdir, abstract)
  assert int(resumed.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.opt_state), jax.device_get(state.opt_state))


def test_load_variables_needs_batch_stats_for_batchnorm_models(tmp_path):
  model = models.build("resnet18", num_classes=4, width=8)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
  path = _save_npz(tmp_path, _flat(zeros["params"]))
  with pytest.raises(ValueError, match="has 'batch_stats' variables but the checkpoint .* has none"):
    transfer.load_variables(path, variables)
  # A run's checkpoint (variables saved together) brings its statistics along.
  zeros["batch_stats"] = jax.tree.map(lambda x: x + 2.0, zeros["batch_stats"])
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(str(tmp_path / "variables"), zeros)
  restored, _ = transfer.load_variables(str(tmp_path / "variables"), variables)
  jax.tree.map(np.testing.assert_array_equal, restored["batch_stats"], zeros["batch_stats"])
