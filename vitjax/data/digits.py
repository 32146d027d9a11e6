"""The embedded default dataset: scikit-learn's 1,797 handwritten digits as a TFDS builder.

The images ship inside the scikit-learn wheel, so preparing this dataset needs no download. Going through TFDS
means the quickstart exercises exactly the tf.data path that any public dataset takes.
"""

import numpy as np
import tensorflow_datasets as tfds

NUM_TEST = 360
SPLIT_SEED = 0


def split_indices() -> dict[str, np.ndarray]:
  """A fixed, stratified, seeded train/test split of the 1,797 digits: 1,437 train and 360 test."""
  from sklearn import datasets, model_selection

  labels = datasets.load_digits().target
  train, test = model_selection.train_test_split(
    np.arange(len(labels)), test_size=NUM_TEST, stratify=labels, random_state=SPLIT_SEED
  )
  return {"train": np.sort(train), "test": np.sort(test)}


class VitjaxDigits(tfds.core.GeneratorBasedBuilder):
  """8x8 grayscale handwritten digits (UCI ML / scikit-learn), stored at their native resolution."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stratified 1,437 / 360 split with seed 0."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=self.__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(8, 8, 1)),
          "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://archive.ics.uci.edu/dataset/80",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data is inside scikit-learn.
    return {name: self._generate_examples(indices) for name, indices in split_indices().items()}

  def _generate_examples(self, indices):
    from sklearn import datasets

    digits = datasets.load_digits()
    # Pixel values are 0..16; stretch them to the usual 0..255 of an 8-bit image.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    for index in indices:
      yield int(index), {"image": images[index], "label": int(digits.target[index])}
