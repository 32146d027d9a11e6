"""The embedded digits dataset: sizes, disjoint splits, labels and pixels against scikit-learn."""

import numpy as np
import tensorflow_datasets as tfds
from sklearn import datasets

from vitjax import data
from vitjax.data import digits


def _load(digits_dir, split):
  builder = data.builder_by_name("vitjax_digits", data_dir=digits_dir).builder
  examples = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
  return np.stack([e["image"] for e in examples]), np.array([e["label"] for e in examples])


def test_split_sizes_and_disjointness():
  splits = digits.split_indices()
  assert len(splits["train"]) == 1437 and len(splits["test"]) == 360
  assert not set(splits["train"]) & set(splits["test"])
  assert set(splits["train"]) | set(splits["test"]) == set(range(1797))


def test_split_is_stratified():
  labels = datasets.load_digits().target
  counts = np.bincount(labels[digits.split_indices()["test"]], minlength=10)
  assert counts.min() >= 35 and counts.max() <= 37  # 360 test digits, about 36 of each class.


def test_stored_examples_match_scikit_learn(digits_dir):
  source = datasets.load_digits()
  for split in ("train", "test"):
    images, labels = _load(digits_dir, split)
    assert images.shape == ({"train": 1437, "test": 360}[split], 8, 8, 1) and images.dtype == np.uint8
    assert labels.min() == 0 and labels.max() == 9
    # Match each stored example back to its scikit-learn original, by pixels and label.
    expected = np.round(source.images * 255 / 16).astype(np.uint8)
    index = {expected[i].tobytes(): source.target[i] for i in digits.split_indices()[split]}
    assert all(index[img[..., 0].tobytes()] == lab for img, lab in zip(images, labels))


def test_builder_metadata(digits_dir):
  source = data.builder_by_name("vitjax_digits", data_dir=digits_dir)
  assert data.num_classes(source) == 10
  assert data.class_names(source) == [str(d) for d in range(10)]
  assert data.num_examples(source, "train") == 1437 and data.num_examples(source, "train[:10%]") == 144
