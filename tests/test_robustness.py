"""Robustness: attacks (against FGSM's closed form on a linear model), corruptions, BBSE, MC dropout, temperature
scaling, the robust training objectives and `--mode=robustness` end to end."""

import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import ndimage
from sklearn import datasets

from configs import quickstart, robust_digits
from tests.support import tiny_config
from vitjax import losses
from vitjax.models.layers import BatchNorm
from vitjax.robustness import attacks, corruptions, report, shift, summaries, uncertainty
from vitjax.train import loop, objectives

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AFFINE = (np.float32(2 / 255), np.float32(-1.0))  # value_range(-1, 1).


class MLP(nn.Module):
  """A small classifier of 8x8 digits, with optional BatchNorm and dropout."""

  dropout_rate: float = 0.0
  batch_norm: bool = False
  hidden: int = 64

  @nn.compact
  def __call__(self, images, *, train):
    x = nn.relu(nn.Dense(self.hidden)(images.reshape(len(images), -1)))
    if self.batch_norm:
      x = BatchNorm(use_running_average=not train)(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    return nn.Dense(10)(x)


@pytest.fixture(scope="module")
def digits():
  """The 8x8 digits as uint8 pixels (N, 8, 8, 1) and labels, split 1,000 / 797."""
  loaded = datasets.load_digits()
  pixels = np.round(loaded.images * (255 / 16)).astype(np.uint8)[..., None]
  return pixels[:1000], loaded.target[:1000], pixels[1000:], loaded.target[1000:]


@pytest.fixture(scope="module")
def trained(digits):
  """The MLP trained for 200 full-batch Adam steps on the first 1,000 digits (about 93% on the rest)."""
  pixels, labels, *_ = digits
  model = MLP()
  inputs = attacks.from_pixels(jnp.asarray(pixels, jnp.float32), *AFFINE)
  params = model.init(jax.random.key(0), inputs[:1], train=False)["params"]
  tx = optax.adam(1e-2)
  loss = lambda p: losses.softmax_cross_entropy(
    model.apply({"params": p}, inputs, train=False), jax.nn.one_hot(labels, 10)
  ).mean()  # noqa: E731

  @jax.jit
  def train(params):
    def step(carry, _):
      params, state = carry
      updates, state = tx.update(jax.grad(loss)(params), state)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, tx.init(params)), None, length=200)[0][0]

  return model, {"params": train(params)}


@pytest.fixture(scope="module")
def attacked(trained):
  """`attacked(name, pixels, labels, epsilon, steps=10) -> (accuracy, adversarial pixels)` on the trained MLP,
  jitted once per attack and number of steps."""
  model, variables = trained

  @functools.partial(jax.jit, static_argnames=("name", "steps"))
  def run(pixels, labels, epsilon, *, name, steps):
    one_hot = jax.nn.one_hot(labels, 10)
    loss = lambda x: losses.softmax_cross_entropy(model.apply(variables, x, train=False), one_hot)  # noqa: E731
    adversarial = attacks.attack(
      name,
      attacks.in_pixels(loss, *AFFINE),
      pixels,
      jax.random.key(1),
      epsilon=epsilon,
      relative_step_size=0.25,
      steps=steps,
    )
    logits = model.apply(variables, attacks.from_pixels(adversarial, *AFFINE), train=False)
    return jnp.mean(jnp.argmax(logits, -1) == labels), adversarial

  def attacked(name, pixels, labels, epsilon, steps=10):
    accuracy, adversarial = run(jnp.asarray(pixels, jnp.float32), labels, epsilon, name=name, steps=steps)
    return float(accuracy), np.asarray(adversarial)

  return attacked


def test_pgd_never_beats_fgsm_and_zero_epsilon_is_clean(digits, trained, attacked):
  *_, pixels, labels = digits
  pixels, labels = pixels[:400], labels[:400]
  model, variables = trained
  clean = float(
    np.mean(
      np.argmax(model.apply(variables, attacks.from_pixels(pixels.astype(np.float32), *AFFINE), train=False), -1)
      == labels
    )
  )
  assert clean > 0.9
  for name in attacks.ATTACKS:
    assert attacked(name, pixels, labels, 0.0)[0] == pytest.approx(clean)
  previous = clean
  for epsilon in (8.0, 16.0, 32.0):
    fgsm, _ = attacked("fgsm", pixels, labels, epsilon)
    pgd, _ = attacked("pgd_linf", pixels, labels, epsilon)
    assert pgd <= fgsm < previous
    previous = pgd
  assert previous < 0.5  # A 32-level L-inf budget breaks most of a non-robust model's answers.


def test_perturbations_stay_in_the_ball_and_the_pixel_range(digits, attacked):
  *_, pixels, labels = digits
  pixels, labels = pixels[:400], labels[:400]
  for name, epsilon in (("fgsm", 12.0), ("pgd_linf", 12.0), ("pgd_l2", 300.0)):
    _, adversarial = attacked(name, pixels, labels, epsilon, steps=5)
    delta = adversarial - pixels
    assert adversarial.min() >= 0 and adversarial.max() <= 255
    if name == "pgd_l2":
      assert np.sqrt((delta**2).sum(axis=(1, 2, 3))).max() <= epsilon * (1 + 1e-5)
    else:
      assert np.abs(delta).max() <= epsilon + 1e-4 and np.abs(delta).max() == pytest.approx(epsilon)


def test_fgsm_on_a_linear_model_is_the_sign_of_its_closed_form_gradient():
  rng = np.random.default_rng(0)
  kernel, pixels = rng.normal(size=(12, 3)), rng.uniform(0, 255, size=(5, 2, 2, 3))
  labels = np.array([0, 1, 2, 1, 0])
  logits_fn = lambda x: x.reshape(len(x), -1) @ kernel  # noqa: E731
  loss = lambda x: losses.softmax_cross_entropy(logits_fn(x), jax.nn.one_hot(labels, 3))  # noqa: E731
  adversarial = attacks.fgsm(attacks.in_pixels(loss, *AFFINE), jnp.asarray(pixels, jnp.float32), epsilon=10.0)
  # d loss / d pixel = scale * W (softmax - onehot), per example.
  inputs = pixels.reshape(5, -1) * AFFINE[0] + AFFINE[1]
  z = inputs @ kernel
  probs = np.exp(z - z.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  grad = (probs - np.eye(3)[labels]) @ kernel.T * AFFINE[0]
  expected = np.clip(pixels + 10.0 * np.sign(grad).reshape(pixels.shape), 0, 255)
  np.testing.assert_allclose(np.asarray(adversarial), expected, atol=1e-3)


def _smooth_colour_images():
  rng = np.random.default_rng(0)
  fields = ndimage.gaussian_filter(rng.uniform(0, 255, (4, 32, 32, 3)), (0, 2, 2, 0))
  return ((fields - fields.min()) / np.ptp(fields) * 200 + 30).astype(np.uint8)


@pytest.mark.parametrize("kind", corruptions.KINDS)
def test_corruption_is_identity_at_severity_0_and_grows_with_severity(kind):
  images = _smooth_colour_images()
  np.testing.assert_array_equal(corruptions.corrupt(images, kind, 0), images)
  distances = [np.linalg.norm(corruptions.corrupt(images, kind, s, seed=3) - images.astype(float)) for s in range(6)]
  assert all(np.diff(distances) > 0), distances


def test_corruption_parameters_are_the_tables():
  grey = np.full((2, 64, 64, 3), 128, np.uint8)
  noisy = corruptions.corrupt(grey, "gaussian_noise", 3).astype(float)
  assert np.std(noisy) == pytest.approx(0.08 * 255, rel=0.02)
  images = _smooth_colour_images()
  contrast = corruptions.corrupt(images, "contrast", 2).astype(float)
  assert np.std(contrast) == pytest.approx(0.5 * np.std(images.astype(float)), rel=0.02)
  disk = corruptions.defocus_kernel(1.0, 0.01).round(6)  # Radius 1: the centre and its 4 neighbours.
  assert disk.sum() == pytest.approx(1) and disk[1:4, 1:4].tolist() == [[0, 0.2, 0], [0.2, 0.2, 0.2], [0, 0.2, 0]]
  kernel = corruptions.motion_kernel(3, 1e6, 0.0)  # Flat weights, horizontal: 3 taps to the right of the centre.
  np.testing.assert_allclose(kernel[3, 3:6], [1 / 3] * 3)
  with pytest.raises(
    ValueError, match="Unknown config.robustness.corruptions \\['fog'\\]; choose from: gaussian_noise"
  ):
    corruptions.corrupt(images, "fog", 1)


def test_bbse_recovers_known_weights():
  rng = np.random.default_rng(0)
  num_classes = 4
  conditional = 0.7 * np.eye(num_classes) + 0.3 * rng.dirichlet(np.ones(num_classes), num_classes).T  # P(pred | y)
  source_prior, weights = np.full(num_classes, 0.25), np.array([2.0, 0.4, 1.2, 0.4])
  confusion = conditional * source_prior  # C[i, j] = P(pred i, y j).
  mu = confusion @ weights
  predictions = np.repeat(np.arange(num_classes), np.round(mu * 1_000_000).astype(int))
  np.testing.assert_allclose(shift.bbse_weights(confusion, predictions), weights, atol=1e-4)
  # From samples: 1-D Gaussian classes and their exact (calibrated) posterior under the source prior.
  source_labels = rng.choice(num_classes, 20_000, p=source_prior)
  target_labels = rng.choice(num_classes, 20_000, p=source_prior * weights)

  def posterior(y):
    x = rng.normal(y.astype(float), 0.8)[:, None]
    log_joint = -((x - np.arange(num_classes)) ** 2) / (2 * 0.8**2) + np.log(source_prior)
    joint = np.exp(log_joint - log_joint.max(1, keepdims=True))
    return joint / joint.sum(1, keepdims=True)

  result = shift.evaluate_shift(posterior(source_labels), source_labels, posterior(target_labels), target_labels)
  assert result["weight_mse"] < 0.01 < result["unweighted_mse"]
  assert result["accuracy"] < result["corrected_accuracy"] == pytest.approx(result["oracle_accuracy"], abs=0.01)
  assert (
    np.bincount(shift.resample(np.repeat(np.arange(4), 50), np.array([0.5, 0.5, 0, 0]), 100, rng), minlength=200)[
      100:
    ].sum()
    == 0
  )


def test_mc_dropout_spreads_only_with_dropout_and_keeps_batch_norm_in_eval_mode():
  images = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
  variables = MLP(batch_norm=True).init(jax.random.key(1), images, train=False)
  # Running averages far from the batch's own statistics: a BatchNorm in training mode would change the outputs.
  variables["batch_stats"] = jax.tree.map(lambda v: v + 3.0, variables["batch_stats"])
  eval_probs = jax.nn.softmax(MLP(batch_norm=True).apply(variables, images, train=False))
  for rate, spread in ((0.0, False), (0.5, True)):
    passes = uncertainty.mc_dropout_probs(MLP(dropout_rate=rate, batch_norm=True), passes=4)
    probs = np.asarray(jax.jit(passes)(variables, images, jax.random.key(2)))
    summary = uncertainty.mc_summary(probs)
    assert probs.shape == (4, 16, 10) and (summary["mutual_information"].max() > 1e-4) == spread
    if not spread:
      assert summary["mutual_information"].max() == 0.0
      np.testing.assert_allclose(probs[0], eval_probs, atol=1e-6)


def test_temperature_scaling_never_raises_nll_and_finds_the_sharpening():
  rng = np.random.default_rng(0)
  calibrated = rng.normal(size=(4000, 5)) * 2
  probs = np.exp(calibrated) / np.exp(calibrated).sum(1, keepdims=True)
  labels = np.array([rng.choice(5, p=p) for p in probs])
  assert uncertainty.fit_temperature(3 * calibrated, labels) == pytest.approx(3.0, rel=0.1)
  for logits in (3 * calibrated, 0.3 * calibrated, calibrated, rng.normal(size=(50, 5))):
    t = uncertainty.fit_temperature(logits, labels[: len(logits)])
    assert uncertainty.nll(logits, labels[: len(logits)], t) <= uncertainty.nll(logits, labels[: len(logits)])


def test_mce_against_itself_is_one_and_against_twice_the_errors_a_half():
  table = {"contrast": {str(s): 1.0 - 0.1 * s for s in range(6)}}
  worse = {"contrast": {str(s): 1.0 - 0.2 * s for s in range(6)}}
  assert summaries.mean_corruption_error(table, 1.0, {"corruptions": table, "clean": 1.0})["mce"] == pytest.approx(1.0)
  result = summaries.mean_corruption_error(table, 1.0, {"corruptions": worse, "clean": 1.0})
  assert result["mce"] == pytest.approx(0.5) and result["relative_mce"] == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["pgd_at", "trades", "fast_fgsm", "gaussian_noise"])
def test_robust_objectives_train(name, digits):
  pixels, labels, *_ = digits
  config = robust_digits.get_config(name if name in robust_digits.OBJECTIVES else None)
  config.objective, config.data.pp_train = name, "value_range(-1, 1)"
  setting = objectives.Setting(losses.from_config(config.loss), 10, (8, 8, 1))
  objective = objectives.from_config(config, setting)
  model = MLP(batch_norm=True, hidden=16)
  batch = {
    "image": attacks.from_pixels(jnp.asarray(pixels[:64], jnp.float32), *AFFINE),
    "labels": jax.nn.one_hot(labels[:64], 10),
  }
  variables = model.init(jax.random.key(0), batch["image"], train=False)
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, batch_stats, rng):
    def loss_fn(p):
      loss, metrics, new_batch_stats = objective(objectives.Forward(model.apply, batch_stats), p, batch, rng)
      return loss, (metrics, new_batch_stats)

    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, batch_stats, loss, metrics

  params, opt_state, batch_stats = variables["params"], tx.init(variables["params"]), variables["batch_stats"]
  history = []
  for i in range(5):
    params, opt_state, batch_stats, loss, metrics = step(params, opt_state, batch_stats, jax.random.key(i))
    history.append(float(loss))
  assert history[-1] < history[0] and np.all(np.isfinite(history))
  if name != "trades":
    limit = 8.0 if name != "gaussian_noise" else 255.0
    assert 0 < float(metrics["perturbation"]) <= limit + 1e-3


def test_robust_configs_name_their_objective_and_check_budgets():
  assert (
    robust_digits.get_config().objective == "pgd_at"
    and robust_digits.get_config("trades,runlocal").objective == "trades"
  )
  with pytest.raises(ValueError, match="Unknown argument 'madry' for robust_digits; choose one of: pgd_at, trades"):
    robust_digits.get_config("madry")
  config = robust_digits.get_config()
  config.adversarial.epsilon = 0.0
  setting = objectives.Setting(losses.from_config(config.loss), 10, (32, 32, 3))
  with pytest.raises(ValueError, match=r"config.adversarial.epsilon must be > 0 \(pixel levels of 1/255\), got 0.0"):
    objectives.from_config(config, setting)


def test_robustness_mode_writes_the_report(digits_dir, tmp_path):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny_config(digits_dir, total_steps=3, eval_every=3, checkpoint_every=3), workdir)
  overrides = {
    "data.data_dir": digits_dir,
    "data.eval_split": "test[:40]",
    "eval_batch_size": 40,
    "robustness.epsilons": "(0.0, 8.0)",
    "robustness.l2_epsilons": "(64.0,)",
    "robustness.steps": 2,
    "robustness.corruptions": "('gaussian_noise','contrast')",
    "robustness.label_shift.trials": 2,
    "robustness.mc_dropout.passes": 3,
    "robustness.mc_dropout.dropout_rate": 0.2,
  }
  command = [
    sys.executable,
    "-m",
    "vitjax.main",
    "--config=configs/quickstart.py",
    f"--workdir={workdir}",
    "--mode=robustness",
  ]
  command += [f"--config.{key}={value}" for key, value in overrides.items()]
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
  out = subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True).stdout
  with open(os.path.join(workdir, "robustness.json")) as f:
    report = json.load(f)
  assert report["num_examples"] == 40 and set(report["adversarial"]) == {"fgsm", "pgd_linf", "pgd_l2"}
  assert report["adversarial"]["fgsm"]["0"] == report["adversarial"]["pgd_linf"]["0"] == report["clean"]
  assert set(report["adversarial"]["pgd_l2"]) == {"64"} and 0 <= report["adversarial"]["fgsm"]["8"] <= 1
  assert list(report["corruptions"]["contrast"]) == ["0", "1", "2", "3", "4", "5"]
  assert report["calibration"]["heldout_nll_after"] <= report["calibration"]["heldout_nll_before"]
  # No calibration_split: 8 of the 40 eval examples are held out, the other 32 score the temperature and BBSE.
  held_out = "test[:40]: 8 of 40 examples at random (seed 0); calibration and label shift scored on the other 32"
  assert report["calibration"]["split"] == held_out
  assert report["mc_dropout"]["mutual_information"] > 0 and 0 <= report["label_shift"]["corrected_accuracy"] <= 1
  assert os.path.exists(os.path.join(workdir, "robustness_corruptions.png"))
  assert "Robustness on 40 examples: clean" in out and "Final test[:40] accuracy" in out


def test_the_default_calibration_examples_are_never_training_examples(caplog):
  config = quickstart.get_config()  # Trains on all of "train": no slice of it is held out.
  with caplog.at_level("WARNING"):
    report._warn_if_seen(config, config)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    config.robustness.calibration_split = "train[-20%:]"
    report._warn_if_seen(config, config)
  (line,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert "calibration_split=train[-20%:] is part of the run's training split train" in line
  logits, labels = np.random.default_rng(0).normal(size=(360, 10)), np.arange(360) % 10
  (held_logits, held_labels), (logits_rest, labels_rest) = report.split_off_heldout(logits, labels, 0.2, seed=0)
  assert len(held_labels) == 72 and len(labels_rest) == 288 and len(set(held_labels)) == 10  # Not one class.
  rows = np.concatenate([held_logits, logits_rest])
  assert sorted(map(tuple, rows)) == sorted(map(tuple, logits))  # Disjoint and complete.
