"""Explanation methods held to their own defining properties on hand-built models, and --mode=explain end to end."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax import checkpoints, models
from vitjax.configs import common
from vitjax.explain import attention, attributions, faithfulness, gradcam, lime, methods, occlusion, visualize
from vitjax.explain.scorer import Scorer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SmallCNN(nn.Module):
  """Two convolutions, a smooth nonlinearity and a dense head: enough curvature that IG's path integral matters."""

  @nn.compact
  def __call__(self, x, *, train):
    del train
    x = jnp.tanh(nn.Conv(6, (3, 3), strides=2, name="conv1")(x))
    x = nn.softplus(nn.Conv(8, (3, 3), name="conv2")(x))
    return nn.Dense(3, name="head")(jnp.mean(x, axis=(1, 2)))


class BrightnessCNN(nn.Module):
  """Class 1 is the mean rectified response of a brightness detector, class 0 of its negative: the class depends
  only on where the image is bright."""

  @nn.compact
  def __call__(self, x, *, train):
    del train
    features = nn.Conv(2, (3, 3), name="features")(x)
    return nn.Dense(2, use_bias=False, name="head")(jnp.mean(nn.relu(features), axis=(1, 2)))


class CornerModel(nn.Module):
  """Logits from the top-left 8x8 corner of the image only: everything else is irrelevant to it."""

  @nn.compact
  def __call__(self, x, *, train):
    del train
    return nn.Dense(2, name="head")(jnp.tanh(x[:, :8, :8].reshape(x.shape[0], -1)))


class LinearScore(nn.Module):
  """Two-class logits (0, w . x) with fixed weights: the probability of class 1 rises with each weighted pixel."""

  weights: np.ndarray

  @nn.compact
  def __call__(self, x, *, train):
    del train
    score = jnp.sum(x * jnp.asarray(self.weights), axis=(1, 2, 3))
    return jnp.stack([jnp.zeros_like(score), score], axis=-1)


def _scorer(model, image_shape, *, seed=0, normalize=lambda x: x / 127.5 - 1.0):
  variables = model.init(jax.random.key(seed), jnp.zeros((1, *image_shape)), train=False)
  return Scorer(variables, model, normalize)


def _image(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape).astype(np.float32)


@pytest.mark.parametrize("kind", attributions.BASELINES)
def test_integrated_gradients_are_complete_at_128_steps(kind):
  scorer, image = _scorer(SmallCNN(), (16, 16, 3)), jnp.asarray(_image((16, 16, 3)))
  reference = attributions.baseline(image, kind, blur_sigma=3.0)
  values, error = attributions.integrated_gradients(scorer, image, 2, reference, steps=128, batch_size=64)
  ends = scorer.logits(jnp.stack([image, reference]))[:, 2]
  difference = float(ends[0] - ends[1])
  assert abs(difference) > 1e-3
  np.testing.assert_allclose(float(jnp.sum(values)), difference, rtol=0.01)
  assert float(error) == pytest.approx(abs(float(jnp.sum(values)) - difference) / abs(difference), abs=1e-4)
  assert float(error) < 0.01


def test_smoothgrad_without_noise_is_the_gradient_and_the_gradient_is_the_finite_difference():
  scorer, image = _scorer(SmallCNN(), (16, 16, 3)), jnp.asarray(_image((16, 16, 3)))
  grads = attributions.gradients(scorer, image, 1)
  smooth = attributions.smoothgrad(scorer, image, 1, jax.random.key(0), samples=3, noise=0.0, batch_size=2)
  np.testing.assert_allclose(smooth, grads, rtol=1e-4, atol=1e-7)
  step = np.zeros(image.shape, np.float32)
  step[5, 7, 1] = 0.5
  logit = lambda x: float(scorer.logits(x[None])[0, 1])
  slope = (logit(image + step) - logit(image - step)) / 1.0
  assert slope == pytest.approx(float(grads[5, 7, 1]), rel=0.05, abs=1e-6)


def test_grad_cam_of_a_cnn_lights_the_region_its_class_depends_on():
  model = BrightnessCNN()
  scorer = _scorer(model, (16, 16, 3), normalize=lambda x: x / 255.0)
  kernel = np.zeros((3, 3, 3, 2), np.float32)
  kernel[..., 0], kernel[..., 1] = 1.0 / 27, -1.0 / 27
  params = {"features": {"kernel": kernel, "bias": np.zeros(2, np.float32)}, "head": {"kernel": np.eye(2)[::-1]}}
  scorer = scorer.replace(variables={"params": jax.tree.map(jnp.asarray, params)})
  image = np.zeros((16, 16, 3), np.float32)
  image[2:6, 9:13] = 255.0  # A bright square: the only thing class 1 responds to.
  cam = np.asarray(gradcam.grad_cam(scorer, jnp.asarray(image), 1, layer="features"))
  halo = np.zeros((16, 16), bool)
  halo[1:7, 8:14] = True  # The square and the 3x3 convolution's reach around it.
  assert cam[2:6, 9:13].min() > 0 and np.all(cam[~halo] == 0)
  assert gradcam.grad_cam(scorer, jnp.asarray(image), 0, layer="features").max() == 0  # No evidence for class 0.


def test_default_grad_cam_layer_is_the_last_stage_with_more_than_one_position():
  def layer(name, size):
    model = models.build(name, num_classes=3)
    variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), image_shape=(size, size, 3)))
    return gradcam.default_layer(Scorer(variables, model, lambda x: x), (size, size, 3))

  assert layer("resnet18", 64) == "layer4"
  assert layer("resnet18", 32) == "layer3"  # layer4 is 1x1 there: a single position says nothing of where.
  assert layer("vit_micro8", 32) == "Transformer/encoderblock_3"


@pytest.mark.parametrize("prefix", [0, 1])
def test_attention_rollout_of_uniform_attention_is_uniform(prefix):
  tokens = 10
  uniform = [jnp.full((3, tokens, tokens), 1.0 / tokens) for _ in range(4)]
  flow = np.asarray(attention.rollout(uniform, None, prefix=prefix))
  np.testing.assert_allclose(flow, np.full(tokens - prefix, flow[0]), rtol=1e-6)
  probe = jnp.full((3, 1, tokens), 1.0 / tokens)
  np.testing.assert_allclose(attention.rollout(uniform, probe, prefix=0), 1.0 / tokens, rtol=1e-6)
  # Not uniform attention: all to token 1 in one block, and the residual identity keeps half the flow at home.
  focused = jnp.zeros((3, tokens, tokens)).at[:, :, 1].set(1.0)
  flow = np.asarray(attention.rollout([focused], None, prefix=0))
  np.testing.assert_allclose(flow, np.where(np.arange(tokens) == 1, 0.5 + 0.5 / tokens, 0.5 / tokens), rtol=1e-6)


def test_a_vit_whose_queries_are_zero_attends_uniformly_everywhere():
  model = models.build("vit_micro4", num_classes=3, num_layers=2, hidden_size=16, mlp_dim=16, classifier="token")
  scorer = _scorer(model, (16, 16, 3))
  zero_queries = lambda path, x: jnp.zeros_like(x) if "query" in "/".join(str(k.key) for k in path) else x
  scorer = scorer.replace(variables=jax.tree_util.tree_map_with_path(zero_queries, scorer.variables))
  flow, heads = attention.attention_maps(scorer, jnp.asarray(_image((16, 16, 3))))
  assert heads.shape == (4, 16, 16)
  np.testing.assert_allclose(flow, flow[0, 0], rtol=1e-5)
  np.testing.assert_allclose(heads, 1.0 / 17, rtol=1e-5)  # 16 patches and the class token.


def test_occlusion_of_a_region_the_model_ignores_is_zero():
  scorer = _scorer(CornerModel(), (16, 16, 3), seed=1)
  sensitivity = np.asarray(
    occlusion.occlusion(scorer, jnp.asarray(_image((16, 16, 3))), 1, window=4, stride=4, fill=0.0, batch_size=8)
  )
  # The occluded and the original image go through the model in batches of different sizes, and XLA's CPU kernels
  # may then round the same score differently by an ulp (AVX2 vs AVX-512): zero up to float32 rounding of the score.
  rounding = 8 * np.finfo(np.float32).eps
  assert np.all(np.abs(sensitivity[8:]) <= rounding) and np.all(np.abs(sensitivity[:, 8:]) <= rounding)
  assert np.all(np.abs(sensitivity[:8, :8]) > 100 * rounding)


def test_lime_finds_the_superpixel_a_linear_model_reads():
  colors = np.random.default_rng(0).integers(40, 256, (4, 4, 3))
  image = np.kron(colors, np.ones((8, 8, 1))).astype(np.uint8)  # 16 flat blocks: SLIC's 16 superpixels.
  weights = np.zeros((32, 32, 3), np.float32)
  weights[8:16, 16:24] = 0.02 / 64
  scorer = _scorer(LinearScore(weights), (32, 32, 3), normalize=lambda x: x)
  found = lime.lime(
    scorer,
    image,
    1,
    jax.random.key(0),
    samples=256,
    segments=16,
    compactness=10.0,
    kernel_width=0.25,
    ridge=0.01,
    batch_size=64,
  )
  block_values = found[::8, ::8]
  assert np.argmax(block_values) == np.ravel_multi_index((1, 2), (4, 4))
  others = np.delete(block_values.reshape(-1), np.ravel_multi_index((1, 2), (4, 4)))
  assert np.max(np.abs(others)) < 0.05 * block_values[1, 2]


def test_deletion_auc_of_the_true_contributions_is_below_a_random_rankings():
  rng = np.random.default_rng(0)
  weights = (rng.random((16, 16, 3)) < 0.2) * rng.random((16, 16, 3)).astype(np.float32) * 2e-4
  image = _image((16, 16, 3))
  scorer = _scorer(LinearScore(weights), (16, 16, 3), normalize=lambda x: x)
  perfect = jnp.asarray((weights * image).sum(-1))
  random = jax.random.uniform(jax.random.key(0), (16, 16))
  areas = faithfulness.deletion_insertion(
    scorer,
    jnp.asarray(image),
    1,
    jnp.stack([perfect, random]),
    jax.random.key(1),
    steps=16,
    blur_sigma=2.0,
    batch_size=17,
  )
  (perfect_deletion, _), (random_deletion, _) = np.asarray(areas)
  assert perfect_deletion < random_deletion - 0.05


def test_class_model_targets_are_names_indices_or_layer_channels():
  names = ["cat", "dog", "7"]
  found = visualize.targets(("dog", "0", "7", "layer4:12"), names, [])
  assert found == [("dog", None, 1), ("cat", None, 0), ("7", None, 2), ("layer4:12", "layer4", 12)]
  assert visualize.targets((), names, [2, 0, 2]) == [("7", None, 2), ("cat", None, 0)]
  with pytest.raises(ValueError, match="'bird'"):
    visualize.targets(("bird",), names, [])


def test_bad_options_fail_early_with_one_line():
  options = common.get_base_config().explain
  options.methods = ("gradients", "shap")
  with pytest.raises(ValueError, match="shap"):
    methods.check_options(options)


def _tiny_run(workdir: str, digits_dir: str) -> None:
  """A quickstart workdir whose checkpoint is the micro ViT at initialisation with a random head, no training."""
  config = common.get_base_config()
  config.update_from_flattened_dict(
    {"model.name": "vit_micro16", "model.classifier": "token", "data.data_dir": digits_dir}
  )
  config.data.pp_eval = "resize(32, method='nearest')|to_rgb|value_range(-1, 1)"
  model = models.from_config(config.model, num_classes=10)
  params = models.init_variables(model, jax.random.key(0), image_shape=(32, 32, 3))["params"]
  params["head"]["kernel"] = jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape)
  manager = checkpoints.create_manager(workdir)
  checkpoints.save(manager, {"params": params}, step=1, meta={})
  manager.wait_until_finished()
  checkpoints.write_run_info(workdir, config, [str(i) for i in range(10)])


def test_explain_mode_writes_the_grids_and_explain_json(digits_dir, tmp_path):
  workdir = str(tmp_path)
  _tiny_run(workdir, digits_dir)
  small = {
    "data.data_dir": digits_dir,
    "model.name": "vit_micro16",
    "explain.num_images": 2,
    # The methods that reach into the model (interception, sown attention) or the host (LIME, PNGs); the others are
    # held to their properties above.
    "explain.methods": "('integrated_gradients', 'grad_cam', 'attention_rollout', 'lime', 'class_model')",
    "explain.integrated_gradients.steps": 8,
    "explain.integrated_gradients.baselines": "('black',)",
    "explain.lime.samples": 32,
    "explain.faithfulness.steps": 8,
    "explain.visualize.steps": 4,
    "explain.visualize_class": "('Transformer/encoderblock_3:5',)",
  }
  command = [sys.executable, "-m", "vitjax.main", "--config=configs/quickstart.py", f"--workdir={workdir}"]
  command += ["--mode=explain", *(f"--config.{key}={value}" for key, value in small.items())]
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
  run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "deletion" in run.stdout and "integrated_gradients_black" in run.stdout
  written = sorted(os.listdir(os.path.join(workdir, "explain")))
  assert written == [
    *(f"attention_heads_00{i}.png" for i in range(2)),
    "class_model.png",
    "image_000.png",
    "image_001.png",
  ]
  with open(os.path.join(workdir, "explain.json")) as f:
    report = json.load(f)
  expected = {"integrated_gradients_black", "grad_cam", "attention_rollout", "lime", "random"}
  assert set(report["summary"]) == expected and len(report["images"]) == 2
  assert report["images"][0]["true_class"] is not None and report["grad_cam_layer"] == "Transformer/encoderblock_3"
  for scores in report["summary"].values():
    assert 0 <= scores["deletion_auc"] <= 1 and 0 <= scores["insertion_auc"] <= 1
  assert report["summary"]["integrated_gradients_black"]["completeness_error"] < 0.2  # Only 8 steps here.
