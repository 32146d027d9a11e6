"""Class-model images with the decorrelated parameterisation: they score their class and keep to low frequencies."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import datasets

from vitjax.explain import visualize
from vitjax.explain.scorer import Scorer


class Linear(nn.Module):
  """Class logits as dot products with fixed templates."""

  @nn.compact
  def __call__(self, x, *, train):
    del train
    return nn.Dense(10, use_bias=False, name="head")(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def digits():
  """(the digits at 32x32 RGB in [0, 255], labels, a scorer whose class c reads the class's mean image minus the
  overall mean, plus three times as much white noise: the high-frequency pattern a classifier also answers to)."""
  data = datasets.load_digits()
  images = np.repeat(np.repeat(data.images, 4, axis=1), 4, axis=2)[..., None].repeat(3, axis=-1) * (255 / 16)
  templates = np.stack([images[data.target == c].mean(0) - images.mean(0) for c in range(10)]).reshape(10, -1)
  templates /= np.linalg.norm(templates, axis=1, keepdims=True)
  noise = np.random.default_rng(0).normal(size=templates.shape)
  kernel = templates + 3.0 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
  variables = {"params": {"head": {"kernel": jnp.asarray(kernel.T, jnp.float32)}}}
  return images.astype(np.float32), data.target, Scorer(variables, Linear(), lambda x: x / 127.5 - 1.0)


def _high_frequency_share(image):
  """The share of the (grey, mean-free) image's energy above a tenth of the sampling frequency."""
  grey = image.mean(-1) - image.mean()
  power = np.abs(np.fft.rfft2(grey)) ** 2
  frequency = np.hypot(np.fft.fftfreq(grey.shape[0])[:, None], np.fft.rfftfreq(grey.shape[1])[None, :])
  return power[frequency > 0.1].sum() / power.sum()


@pytest.mark.parametrize("target", [3, 7])
def test_class_model_beats_the_mean_image_and_is_smoother_than_plain_ascent(digits, target):
  images, labels, scorer = digits
  options = {"image_shape": (32, 32, 3), "steps": 64, "learning_rate": 2.0, "jitter": 2, "blur_sigma": 0.5}
  grown = {
    power: np.asarray(
      visualize.class_model(scorer, target, jax.random.key(0), blur_every=4, decay_power=power, **options)
    )
    for power in (0.0, 1.0)  # 0: the pixel parameterisation (colours still decorrelated).
  }
  score = lambda image: float(scorer.logits(jnp.asarray(image)[None])[0, target])  # noqa: E731
  assert score(grown[1.0]) > score(grown[0.0]) > score(images.mean(0)) + 10
  assert _high_frequency_share(grown[1.0]) < 0.75 * _high_frequency_share(grown[0.0])
  class_means = [images[labels == c].mean((0, -1)).ravel() for c in range(10)]
  correlations = [np.corrcoef(grown[1.0].mean(-1).ravel(), mean)[0, 1] for mean in class_means]
  assert np.argmax(correlations) == target  # It looks most like its own class.


def test_preconditioning_keeps_a_constant_gradient_and_damps_the_finest_pattern():
  constant = jnp.ones((8, 8, 1))
  np.testing.assert_allclose(visualize.precondition(constant, 1.0), constant, rtol=1e-5)
  checkerboard = jnp.asarray((np.indices((8, 8)).sum(0) % 2 * 2 - 1)[..., None], jnp.float32)
  np.testing.assert_allclose(visualize.precondition(checkerboard, 1.0), checkerboard / (8 * np.sqrt(0.5)), rtol=1e-5)
