"""Input pipeline: exact resume (with augmentation and batch mixing), per-process shards, padded evaluation,
class selection, and Mixup / CutMix."""

import math
import time

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from vitjax import data
from vitjax.configs import common
from vitjax.data import mixing


def _data_config(**overrides) -> ml_collections.ConfigDict:
  """The base data config (every key the library reads) with ``overrides``."""
  config = common.get_base_config().data
  config.update(overrides)
  return config


CONFIG = _data_config(
  pp_train="resize(32)|to_rgb|pad_and_crop(4)|flip_lr|value_range(-1, 1)", pp_eval="to_rgb", shuffle_buffer=10_000
)


def _batches(builder, n, config=CONFIG, **kwargs):
  it = data.as_numpy(data.train_dataset(builder, config, batch_size=8, seed=3, **kwargs))
  return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["labels"], y["labels"])


def test_train_stream_resumes_exactly_across_an_epoch_boundary(digits_dir):
  builder = data.builder_by_name("vitjax_digits", data_dir=digits_dir)
  full = _batches(builder, 182)  # 1437 examples: epoch 1 starts inside batch 179.
  _assert_same_batches(full[178:], _batches(builder, 4, start_batch=178))
  assert full[0]["image"].shape == (8, 32, 32, 3) and full[0]["labels"].shape == (8, 10)
  assert full[0]["image"].min() >= -1 and full[0]["image"].max() <= 1


def test_resume_is_exact_with_randaugment_mixup_cutmix_and_a_decoding_spec(digits_dir):
  builder = data.builder_by_name("vitjax_digits", data_dir=digits_dir)
  config = _data_config(
    pp_train="decode|resize(16)|inception_crop(16)|randaugment(2, 9)|value_range(-1, 1)",
    pp_eval=CONFIG.pp_eval,
    mixup={"mixup_alpha": 0.5, "cutmix_alpha": 1.0, "switch_prob": 0.5},
    shuffle_buffer=200,
  )
  full = _batches(builder, 8, config)
  _assert_same_batches(full[5:], _batches(builder, 3, config, start_batch=5))
  for batch in full:
    np.testing.assert_allclose(batch["labels"].sum(-1), 1.0, rtol=1e-5)
  assert any(np.sort(batch["labels"], -1)[:, -2].max() > 0 for batch in full)  # Some targets are mixtures.


@pytest.mark.parametrize(
  "pp_train",
  [
    CONFIG.pp_train,
    "decode|inception_crop(16)|flip_lr|value_range(-1, 1)",
    "decode_jpeg_and_inception_crop(16)|value_range(-1, 1)",
  ],
)
def test_caching_decoded_examples_changes_no_batch(digits_dir, pp_train):
  builder = data.builder_by_name("vitjax_digits", data_dir=digits_dir)
  config = _data_config(pp_train=pp_train, pp_eval=CONFIG.pp_eval)
  cached = _data_config(pp_train=pp_train, pp_eval=CONFIG.pp_eval, cache=True)
  assert builder.share("train").records.element_spec["image"].dtype == tf.string
  assert builder.share("train", cache=True).records.element_spec["image"].dtype == tf.uint8  # Cached decoded.
  # Two epochs: the second one reads from the cache.
  _assert_same_batches(_batches(builder, 360, config), _batches(builder, 360, cached))
  _assert_same_batches(
    list(data.as_numpy(data.eval_dataset(builder, config, batch_size=50))),
    list(data.as_numpy(data.eval_dataset(builder, cached, batch_size=50))),
  )


def test_epochs_are_reshuffled_and_seeds_matter(digits_dir):
  builder = data.builder_by_name("vitjax_digits", data_dir=digits_dir)
  epoch = 1437  # The digits' training split: with one batch per epoch, the second batch is the second epoch.
  config = _data_config(pp_train="to_rgb", pp_eval="to_rgb", shuffle_buffer=10_000)

  def labels(seed, n):
    stream = data.as_numpy(data.train_dataset(builder, config, batch_size=epoch, seed=seed))
    return [batch["labels"].argmax(-1) for batch in _take(stream, n)]

  first, second = labels(3, 2)
  np.testing.assert_array_equal(np.sort(first), np.sort(second))  # The same examples ...
  assert np.mean(first != second) > 0.5  # ... in a new order.
  assert np.mean(labels(4, 1)[0] != first) > 0.5


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_shares_cover_the_split_exactly_once(digits_dir, process_count):
  builder = data.builder_by_name("vitjax_digits", data_dir=digits_dir)
  seen, batch_counts = [], set()
  for index in range(process_count):
    ds = data.eval_dataset(builder, CONFIG, batch_size=64, process_index=index, process_count=process_count)
    batches = list(data.as_numpy(ds))
    batch_counts.add(len(batches))
    for batch in batches:
      real = batch["mask"] == 1
      assert np.all(batch["image"][~real] == 0)
      seen += [
        (img[..., 0].astype(np.uint8).tobytes(), int(lab.argmax()))
        for img, lab in zip(batch["image"][real], batch["labels"][real])
      ]
  assert batch_counts == {math.ceil(math.ceil(360 / process_count) / 64)}  # The same on every process.
  raw = tfds.as_numpy(builder.builder.as_dataset(split="test"))
  assert sorted(seen) == sorted((ex["image"][..., 0].tobytes(), int(ex["label"])) for ex in raw)


def test_classes_keep_and_remap_labels_in_the_given_order(digits_dir):
  config = _data_config(
    pp_train=CONFIG.pp_train, pp_eval=CONFIG.pp_eval, dataset="vitjax_digits", data_dir=digits_dir, classes=(7, 5, 9)
  )
  source = data.from_config(config)
  raw = list(tfds.as_numpy(source.builder.as_dataset(split="test", shuffle_files=False)))
  expected = sorted(
    (ex["image"][..., 0].tobytes(), [7, 5, 9].index(ex["label"])) for ex in raw if ex["label"] in (7, 5, 9)
  )
  assert data.num_classes(source) == 3 and data.class_names(source) == ["7", "5", "9"]
  assert data.num_examples(source, "test") == len(expected)
  seen = []
  for index in range(2):
    for batch in data.as_numpy(data.eval_dataset(source, config, batch_size=16, process_index=index, process_count=2)):
      real = batch["mask"] == 1
      seen += [
        (img[..., 0].astype(np.uint8).tobytes(), int(lab.argmax()))
        for img, lab in zip(batch["image"][real], batch["labels"][real])
      ]
  assert sorted(seen) == expected
  train = _batches(source, 3, config)
  assert all(batch["labels"].shape == (8, 3) for batch in train)
  with pytest.raises(ValueError, match="neither a label id"):
    data.from_config(_data_config(dataset="vitjax_digits", data_dir=digits_dir, classes=(3, 10)))


def test_unknown_dataset_names_the_choices():
  with pytest.raises(ValueError, match=r"Unknown dataset 'cifar11'.*vitjax_digits.*folder"):
    data.builder_by_name("cifar11")


def test_unprepared_public_dataset_fails_fast_offline_and_explains_how_to_prepare_it(tmp_path):
  # This test machine has no internet access: mnist is neither on disk nor downloadable. TFDS alone would retry
  # the unreachable host for minutes before failing.
  builder = data.from_config(_data_config(dataset="mnist", data_dir=str(tmp_path)))
  start = time.monotonic()
  with pytest.raises(data.DatasetUnavailableError, match=r"'mnist' is not prepared.*tfds build mnist.*data_dir"):
    data.prepare(builder)
  elapsed = time.monotonic() - start
  assert elapsed < 30, f"An offline failure took {elapsed:.1f} s."


def _constant_batch(batch_size=6, size=16, classes=6):
  """Image i is filled with the value i + 1; its label is class i."""
  values = np.arange(1, batch_size + 1, dtype=np.float32)
  images = np.broadcast_to(values[:, None, None, None], (batch_size, size, size, 3)).copy()
  return {"image": tf.constant(images), "labels": tf.one_hot(np.arange(batch_size), classes)}, values


def _mix(settings, seed):
  batch, values = _constant_batch()
  mixed = mixing.from_config(settings)(batch, tf.constant([seed, 0], tf.int64))
  return {k: v.numpy() for k, v in mixed.items()}, values


def test_mixup_blends_images_and_labels_with_the_same_weight():
  lams = []
  for seed in range(20):
    out, values = _mix({"mixup_alpha": 0.4}, seed)
    partner = values[::-1]
    lam = (out["image"][:, 0, 0, 0] - partner) / (values - partner)  # Per example; one value for the batch.
    lam = lam[values != partner]
    np.testing.assert_allclose(lam, lam[0], atol=1e-5)
    expected = np.zeros((6, 6))
    expected[np.arange(6), np.arange(6)] += lam[0]
    expected[np.arange(6), np.arange(6)[::-1]] += 1 - lam[0]
    np.testing.assert_allclose(out["labels"], expected, atol=1e-5)
    np.testing.assert_allclose(out["labels"].sum(-1), 1.0, atol=1e-6)
    assert np.all(out["image"] == out["image"][:, :1, :1])  # Whole images are blended.
    lams.append(lam[0])
  assert 0.0 < min(lams) and max(lams) < 1.0 and np.std(lams) > 0.1


def test_cutmix_label_weight_is_the_pasted_area_fraction():
  fractions = []
  for seed in range(20):
    out, values = _mix({"cutmix_alpha": 1.0}, seed)
    partner = values[::-1]
    for i in range(6):
      pasted = out["image"][i, :, :, 0] == partner[i]
      kept = out["image"][i, :, :, 0] == values[i]
      assert np.all(pasted | kept)
      if values[i] == partner[i]:
        continue
      fraction = pasted.mean()
      np.testing.assert_allclose(out["labels"][i, 5 - i], fraction, atol=1e-6)
      np.testing.assert_allclose(out["labels"][i, i], 1 - fraction, atol=1e-6)
      if pasted.any():  # The pasted region is one rectangle.
        rows, cols = np.where(pasted)
        assert pasted[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
      fractions.append(fraction)
  assert len(set(np.round(fractions, 4))) > 5


def test_switch_prob_and_prob_choose_what_happens():
  always_cutmix = {"mixup_alpha": 1.0, "cutmix_alpha": 1.0, "switch_prob": 1.0}
  never_cutmix = dict(always_cutmix, switch_prob=0.0)
  for seed in range(10):
    out, values = _mix(always_cutmix, seed)
    assert set(np.unique(out["image"])) <= set(values)  # Only pasting, never blending.
    out, values = _mix(never_cutmix, seed)
    assert np.all(out["image"] == out["image"][:, :1, :1])
  unchanged = [np.array_equal(_mix({"mixup_alpha": 1.0, "prob": 0.5}, s)[0]["labels"], np.eye(6)) for s in range(40)]
  assert 8 <= sum(unchanged) <= 32
  out, values = _mix({"mixup_alpha": 0.0, "cutmix_alpha": 0.0}, 0)
  np.testing.assert_array_equal(out["labels"], np.eye(6))


def test_mixing_is_the_same_eagerly_and_in_tf_data():
  mixer = mixing.from_config({"mixup_alpha": 0.8, "cutmix_alpha": 1.0})
  batch, _ = _constant_batch()
  seeds = tf.constant([[s, 1] for s in range(6)], tf.int64)
  graph = list(tf.data.Dataset.from_tensor_slices(seeds).map(lambda seed: mixer(batch, seed)))
  for seed, out in zip(seeds, graph):
    eager = mixer(batch, seed)
    np.testing.assert_array_equal(eager["image"].numpy(), out["image"].numpy())
    np.testing.assert_array_equal(eager["labels"].numpy(), out["labels"].numpy())


def test_bad_data_configs_fail_when_the_config_is_read():
  for overrides, message in [
    ({"mixup": {"mixup_alpa": 1.0}}, "Unknown config.data.mixup keys"),
    ({"mixup": {"cutmix_alpha": -1.0}}, "must be >= 0"),
    ({"mixup": {"prob": 1.5}}, r"must lie in \[0, 1\]"),
    ({"pp_train": "resize(32)|fliplr"}, r"config.data.pp_train='resize\(32\)\|fliplr': Unknown preprocessing op"),
    ({"pp_eval": "resize(32"}, r"config.data.pp_eval='resize\(32': Cannot parse preprocessing op"),
    ({"dataset": "cifar11"}, r"Unknown dataset 'cifar11'"),
    ({"dataset": "folder"}, r"config.data.folder must name the root folder"),
  ]:
    with pytest.raises(ValueError, match=message):
      data.from_config(_data_config(**overrides))
