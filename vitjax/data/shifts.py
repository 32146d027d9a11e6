"""Synthetic domain shifts of the embedded digits, for domain adaptation without a download.

These are synthetic targets made here, not public benchmarks: the same 1,797 scikit-learn digits, with the same
train/test split as ``vitjax_digits``, upscaled (nearest) to 32x32 RGB, the input the digits configs feed their
models, and then shifted:

  inverted   white background, dark strokes
  rotated    turned by 30 to 60 degrees either way
  noised     strong additive Gaussian pixel noise (sigma 80 of 255)
  colour     the stroke cut out of a random coloured texture, as |texture - digit| (the MNIST-M recipe)

Every shifted image is a pure function of its digit and index (a generator seeded by both), so a shift's dataset
is the same on every machine. Each shift is an embedded TFDS dataset named ``vitjax_digits_<shift>``.
"""

from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds
from scipy import ndimage

from vitjax.data import digits
from vitjax.errors import ConfigError

SIZE = 32  # The 8x8 digits are upscaled 4x, as `resize(32, method='nearest')` does to the source.
SEED = 20_260_101


def upscale(image: np.ndarray) -> np.ndarray:
  """(8, 8) uint8 -> (32, 32) uint8, every pixel repeated 4x4 (nearest-neighbour)."""
  factor = SIZE // image.shape[0]
  return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _grey(image: np.ndarray) -> np.ndarray:
  return np.repeat(image[..., None], 3, axis=-1)


def invert(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  del rng
  return _grey(255 - image)


def rotate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  angle = rng.uniform(30.0, 60.0) * rng.choice([-1.0, 1.0])
  turned = ndimage.rotate(image.astype(np.float32), angle, reshape=False, order=1, mode="constant", cval=0.0)
  return _grey(np.clip(np.round(turned), 0, 255).astype(np.uint8))


def add_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  noisy = image.astype(np.float32) + rng.normal(0.0, 80.0, image.shape)
  return _grey(np.clip(np.round(noisy), 0, 255).astype(np.uint8))


def texture(rng: np.random.Generator) -> np.ndarray:
  """A (32, 32, 3) float texture in [0, 255]: smooth random colour blobs plus a finer grain."""
  coarse = ndimage.zoom(rng.uniform(0.0, 1.0, (4, 4, 3)), (SIZE / 4, SIZE / 4, 1), order=1)
  fine = ndimage.zoom(rng.uniform(0.0, 1.0, (16, 16, 3)), (SIZE / 16, SIZE / 16, 1), order=1)
  mixed = 0.7 * coarse + 0.3 * fine
  low, high = mixed.min(), mixed.max()
  return 255.0 * (mixed - low) / max(high - low, 1e-6)


def colourise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  blended = np.abs(texture(rng) - image.astype(np.float32)[..., None])
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


SHIFTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
  "inverted": invert,
  "rotated": rotate,
  "noised": add_noise,
  "colour": colourise,
}


def shift_image(name: str, image: np.ndarray, index: int) -> np.ndarray:
  """Digit ``index`` (8x8 uint8) under shift ``name``: a (32, 32, 3) uint8 image, the same on every call."""
  if name not in SHIFTS:
    raise ConfigError(f"Unknown digits shift {name!r}; choose one of: {', '.join(SHIFTS)}.")
  rng = np.random.default_rng([SEED, list(SHIFTS).index(name), index])
  return SHIFTS[name](upscale(image), rng)


class VitjaxDigitsShifted(tfds.core.GeneratorBasedBuilder):
  """The embedded digits under a synthetic shift (one builder config per shift), 32x32 RGB, same split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Inverted, rotated, noised and colour-on-texture digits; vitjax_digits' split."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=f"{name} digits") for name in SHIFTS]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=self.__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(SIZE, SIZE, 3)),
          "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
        }
      ),
      supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the digits are inside scikit-learn.
    return {name: self._generate_examples(indices) for name, indices in digits.split_indices().items()}

  def _generate_examples(self, indices):
    from sklearn import datasets

    loaded = datasets.load_digits()
    images = np.round(loaded.images * (255.0 / 16.0)).astype(np.uint8)
    for index in indices:
      image = shift_image(self.builder_config.name, images[index], int(index))
      yield int(index), {"image": image, "label": int(loaded.target[index])}
