"""The embedded digits at several aspect ratios, for NaFlex: each digit placed on a wide, tall or square canvas.

A synthetic dataset made here, not a public benchmark: scikit-learn's 1,797 digits with ``vitjax_digits``' split,
doubled (nearest) to 16x16 and placed at a random position on a black canvas of 16x64, 64x16, 24x48, 48x24 or
32x32 pixels; each training digit ``TRAIN_PLACEMENTS`` times (5,748 images), each test digit once (360).
Squashing such an image to a square distorts the digit; a NaFlex model sees it at its own aspect ratio. Every
image is a pure function of its digit, index and placement, the same on every machine.
"""

import numpy as np
import tensorflow_datasets as tfds

from vitjax.data import digits

CANVASES = ((16, 64), (64, 16), (24, 48), (48, 24), (32, 32))
DIGIT = 16  # Side of a digit on the canvas: the 8x8 original, each pixel doubled.
SEED = 20_261_204
TRAIN_PLACEMENTS = 4  # 1,437 fixed placements are learnt by heart; four of each digit generalise far better.


def place(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """An (8, 8, 1) uint8 digit, doubled, at a random position on a canvas of a random shape of CANVASES."""
  height, width = CANVASES[rng.integers(len(CANVASES))]
  canvas = np.zeros((height, width, image.shape[-1]), np.uint8)
  top, left = rng.integers(0, height - DIGIT + 1), rng.integers(0, width - DIGIT + 1)
  canvas[top : top + DIGIT, left : left + DIGIT] = np.kron(image, np.ones((2, 2, 1), np.uint8))
  return canvas


class VitjaxDigitsCanvas(tfds.core.GeneratorBasedBuilder):
  """The embedded digits on canvases of five aspect ratios (1:4 to 4:1), one channel, vitjax_digits' split."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "16x16 digits on 16x64, 64x16, 24x48, 48x24 and 32x32 canvases.",
    "1.1.0": "Each training digit on four canvases.",
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=self.__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 1)),
          "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
        }
      ),
      supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the digits are inside scikit-learn.
    splits = digits.split_indices()
    return {name: self._generate_examples(splits[name], TRAIN_PLACEMENTS if name == "train" else 1) for name in splits}

  def _generate_examples(self, indices, placements: int):
    from sklearn import datasets

    loaded = datasets.load_digits()
    images = np.round(loaded.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    for index in indices:
      for k in range(placements):
        image = place(images[index], np.random.default_rng([SEED, int(index), k]))
        yield f"{index}_{k}", {"image": image, "label": int(loaded.target[index])}
