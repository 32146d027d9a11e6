"""Input pipeline: exact resume, per-process shards, padded evaluation, preprocessing spec parsing."""

import math

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vitjax import data
from vitjax.data import preprocess

CONFIG = ml_collections.ConfigDict({
    "train_split": "train", "eval_split": "test", "shuffle_buffer": 10_000,
    "pp_train": "resize(32)|to_rgb|pad_and_crop(4)|flip_lr|value_range(-1, 1)", "pp_eval": "to_rgb"})


def _batches(builder, n, **kwargs):
  it = data.as_numpy(data.train_dataset(builder, CONFIG, batch_size=8, seed=3, **kwargs))
  return [next(it) for _ in range(n)]


def test_train_stream_resumes_exactly_across_an_epoch_boundary(digits_dir):
  builder = data.builder_by_name("vitjax_digits", data_dir=digits_dir)
  full = _batches(builder, 182)  # 1437 examples: epoch 1 starts inside batch 179.
  resumed = _batches(builder, 4, start_batch=178)
  for a, b in zip(full[178:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
  assert full[0]["image"].shape == (8, 32, 32, 3) and full[0]["labels"].shape == (8, 10)
  assert full[0]["image"].min() >= -1 and full[0]["image"].max() <= 1


def test_epochs_are_reshuffled_and_seeds_matter(digits_dir):
  builder = data.builder_by_name("vitjax_digits", data_dir=digits_dir)
  a = _batches(builder, 1)[0]
  it = data.as_numpy(data.train_dataset(builder, CONFIG, batch_size=8, seed=4))
  assert not np.array_equal(a["labels"], next(it)["labels"]) or not np.array_equal(a["image"], next(it)["image"])


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_shares_cover_the_split_exactly_once(digits_dir, process_count):
  builder = data.builder_by_name("vitjax_digits", data_dir=digits_dir)
  seen, batch_counts = [], set()
  for index in range(process_count):
    ds = data.eval_dataset(builder, CONFIG, batch_size=64,
                           process_index=index, process_count=process_count)
    batches = list(data.as_numpy(ds))
    batch_counts.add(len(batches))
    for batch in batches:
      real = batch["mask"] == 1
      assert np.all(batch["image"][~real] == 0)
      seen += [(img[..., 0].astype(np.uint8).tobytes(), int(lab.argmax()))
               for img, lab in zip(batch["image"][real], batch["labels"][real])]
  assert batch_counts == {math.ceil(math.ceil(360 / process_count) / 64)}  # The same on every process.
  raw = tfds.as_numpy(builder.as_dataset(split="test"))
  assert sorted(seen) == sorted((ex["image"][..., 0].tobytes(), int(ex["label"])) for ex in raw)


def test_unknown_op_and_dataset_name_the_choices():
  with pytest.raises(ValueError, match=r"Unknown preprocessing op 'fliplr'.*flip_lr"):
    preprocess.parse("resize(32)|fliplr")
  with pytest.raises(ValueError, match=r"Unknown dataset 'cifar11'.*vitjax_digits"):
    data.builder_by_name("cifar11")


def test_unprepared_public_dataset_explains_how_to_prepare_it(tmp_path, monkeypatch):
  builder = data.builder_by_name("mnist", data_dir=str(tmp_path))

  def offline(*args, **kwargs):
    raise ConnectionError("no network")
  monkeypatch.setattr(builder, "download_and_prepare", offline)
  with pytest.raises(data.DatasetUnavailableError, match=r"'mnist' is not prepared.*tfds build mnist.*data_dir"):
    data.prepare(builder)
