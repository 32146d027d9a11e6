"""Classical baselines: each feature against an independent computation, the images they see, the training-only
vocabulary, seeded sampling and tables, config errors, and `--mode=baseline` end to end with `predict`."""

import colorsys
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import color, feature
from sklearn import datasets, model_selection

from configs import baseline_digits
from vitjax import classical
from vitjax.classical import baseline, classifiers, features, images
from vitjax.data import digits, preprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_images(count=3, size=32, channels=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (count, size, size, channels), dtype=np.uint8)


def _digits(split, classes=None):
  """A digits split as decoded uint8 (8, 8, 1) images and labels, straight from scikit-learn."""
  raw = datasets.load_digits()
  index = digits.split_indices()[split]
  if classes is not None:
    index = index[np.isin(raw.target[index], classes)]
  return np.round(raw.images[index] * (255.0 / 16.0)).astype(np.uint8)[..., None], raw.target[index]


def _config(digits_dir, features_=("hog",), classifiers=("svm_rbf",), **baseline_options):
  config = baseline_digits.get_config()
  config.data.data_dir = digits_dir
  config.baseline.features, config.baseline.classifiers = features_, classifiers
  config.baseline.update(baseline_options)
  return config


@pytest.mark.parametrize("channels", [1, 3])
def test_hog_is_scikit_image_hog_of_the_luminance(channels):
  batch = _random_images(channels=channels)
  got = features.Hog(orientations=8, pixels_per_cell=4, cells_per_block=3).fit_transform(batch)
  lum = [image[..., 0] / 255.0 if channels == 1 else color.rgb2gray(image) for image in batch]
  want = [feature.hog(g, orientations=8, pixels_per_cell=(4, 4), cells_per_block=(3, 3)) for g in lum]
  np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-6)


def test_lbp_histograms_sum_to_one_and_tell_textures_apart():
  size, radii, grid = 32, (1, 2), 2
  stripes = np.tile(np.repeat([0, 255], 2), size // 4)[None, :].repeat(size, 0)
  checker = np.kron((np.indices((size // 4, size // 4)).sum(0) % 2) * 255, np.ones((4, 4)))
  noise = _random_images(1, size, 1)[0, ..., 0]
  batch = np.stack([stripes, np.roll(stripes, 1, axis=1), checker, noise]).astype(np.uint8)[..., None]
  got = features.Lbp(radii=radii, grid=grid).fit_transform(batch)
  sizes = [8 * r + 2 for r in radii for _ in range(grid * grid)]
  assert got.shape == (4, sum(sizes))
  for histograms in got:
    np.testing.assert_allclose([h.sum() for h in np.split(histograms, np.cumsum(sizes)[:-1])], 1.0, rtol=1e-6)
  distance = lambda a, b: np.abs(got[a] - got[b]).sum() / len(sizes)  # Mean L1 distance of the histograms.
  assert distance(0, 1) < 0.2 and min(distance(0, 2), distance(0, 3), distance(2, 3)) > 0.5


@pytest.mark.parametrize("space,mode", [("hsv", "joint"), ("rgb", "per_channel"), ("rgb", "joint")])
def test_colour_histogram_of_a_solid_colour_is_one_bin(space, mode):
  rgb, bins = (200, 30, 60), 8
  batch = np.broadcast_to(np.array(rgb, np.uint8), (1, 16, 16, 3)).copy()
  got = features.ColorHist(space=space, mode=mode, bins=bins).fit_transform(batch)[0]
  values = colorsys.rgb_to_hsv(*(v / 255 for v in rgb)) if space == "hsv" else [v / 255 for v in rgb]
  index = [min(int(v * bins), bins - 1) for v in values]
  if mode == "joint":
    assert got.shape == (bins**3,) and got[np.ravel_multi_index(index, (bins,) * 3)] == 1.0 and got.sum() == 1.0
  else:
    want = np.zeros((3, bins))
    want[range(3), index] = 1.0
    np.testing.assert_array_equal(got, want.ravel())


def test_gabor_energy_is_zero_on_flat_images_and_largest_along_the_stripes():
  bank = features.Gabor(frequencies=(0.125, 0.25), orientations=4, grid=2)
  flat = np.full((2, 32, 32, 1), 137, np.uint8)
  energy = bank.fit_transform(flat)
  assert energy.shape == (2, 8 * 2 * 4) and np.abs(energy).max() < 1e-4
  x = np.arange(64)
  stripes = (127.5 + 127.5 * np.cos(2 * np.pi * 0.25 * x))[None, :].repeat(64, 0)
  mean_energy = bank.energy(stripes / 255.0).mean(axis=(1, 2))  # Filters: (0.125, 0 ... 3pi/4), (0.25, ...).
  assert np.argmax(mean_energy) == 4  # frequency 0.25, theta 0: the filter that oscillates along x.
  transposed = bank.energy(stripes.T / 255.0).mean(axis=(1, 2))
  assert np.argmax(transposed) == 6  # theta pi/2 for stripes along y.


def test_raw_pixels_are_the_image_flattened():
  batch = _random_images(2, 16, 3)
  got = features.RawPixels().fit_transform(batch)
  assert got.shape == (2, 16 * 16 * 3) and got.dtype == np.float32
  np.testing.assert_allclose(got, batch.reshape(2, -1) / 255.0)
  luminance = features.RawPixels(grayscale=True).fit_transform(batch)
  np.testing.assert_allclose(luminance, color.rgb2gray(batch).reshape(2, -1), rtol=1e-6)


def test_feature_union_concatenates_in_order():
  options = baseline_digits.get_config().baseline
  batch = _random_images(2)
  joined = features.from_config("hog+raw_pixels", options, seed=0).fit_transform(batch)
  alone = [features.from_config(name, options, seed=0).fit_transform(batch) for name in ("hog", "raw_pixels")]
  np.testing.assert_array_equal(joined, np.concatenate(alone, axis=1))


@pytest.mark.parametrize("spec", ["value_range(-1, 1)", "to_rgb|normalize", "value_range(0, 1, 0, 255)", "to_rgb"])
def test_images_undo_the_eval_value_range(spec):
  original = _random_images(1, 12, 1)[0]
  processed = preprocess.parse(spec)({"image": tf.constant(original)}, tf.zeros([2], tf.int64))["image"]
  pixels = images.to_uint8(tf.cast(processed, tf.float32).numpy()[None], spec, 12)[0]
  np.testing.assert_array_equal(pixels, np.broadcast_to(original, pixels.shape))


def test_stratified_sample_keeps_the_class_proportions_in_one_pass():
  labels = np.repeat([0, 1, 2], [700, 200, 100])[np.random.default_rng(1).permutation(1000)]
  stream = lambda: ((np.arange(i, min(i + 37, 1000)), labels[i : i + 37]) for i in range(0, 1000, 37))
  kept, kept_labels, seen = images.stratified_sample(stream(), num_classes=3, cap=100, seed=0)
  assert seen == 1000 and np.bincount(kept_labels).tolist() == [70, 20, 10]
  assert len(set(kept.tolist())) == 100 and np.array_equal(labels[kept], kept_labels)
  again, _, _ = images.stratified_sample(stream(), num_classes=3, cap=100, seed=0)
  other, _, _ = images.stratified_sample(stream(), num_classes=3, cap=100, seed=1)
  assert np.array_equal(kept, again) and not np.array_equal(np.sort(kept), np.sort(other))
  everything, _, _ = images.stratified_sample(stream(), num_classes=3, cap=1000, seed=0)
  np.testing.assert_array_equal(everything, np.arange(1000))


def test_vocabulary_is_fitted_on_the_training_images_only(digits_dir, tmp_path, monkeypatch):
  fitted_on = []
  original_fit = features.SiftBow.fit
  monkeypatch.setattr(features.SiftBow, "fit", lambda self, x, y=None: fitted_on.append(x) or original_fit(self, x))
  config = _config(digits_dir, ("sift_bow",), ("knn",))
  config.data.classes = (0, 1)
  config.baseline.sift_bow.vocabulary_size = 20
  baseline.run_baseline(config, str(tmp_path))
  train, _ = _digits("train", classes=(0, 1))
  want = images.load(list(train), config.data.pp_eval, config.baseline.image_size)
  assert len(fitted_on) == 1
  as_set = lambda batch: sorted(image.tobytes() for image in batch)
  assert as_set(fitted_on[0]) == as_set(want)  # Exactly the training split: no test image.


def test_same_seed_gives_the_same_table(digits_dir, tmp_path):
  config = _config(digits_dir, ("lbp", "sift_bow"), ("random_forest", "knn"), max_train_examples=150)
  config.data.classes = (3, 5, 8)
  config.baseline.sift_bow.vocabulary_size = 20
  config.baseline.params.random_forest.n_estimators = 50
  tables = [baseline.run_baseline(config, str(tmp_path / run)) for run in ("a", "b")]
  assert tables[0]["num_train_examples"] == 150 and tables[0]["num_train_seen"] > 150
  accuracies = [[(row["feature"], row["classifier"], row["accuracy"]) for row in t["results"]] for t in tables]
  assert accuracies[0] == accuracies[1] and len(accuracies[0]) == 4


def test_search_picks_the_best_cross_validated_value_on_the_given_features():
  options = baseline_digits.get_config().baseline
  options.search, options.cv_folds = True, 3
  rng = np.random.default_rng(0)
  labels = np.repeat([0, 1, 2], 40)
  points = rng.normal(size=(120, 5)) + labels[:, None] * 0.8
  head, chosen = classifiers.fit(
    classifiers.from_config("knn", options, seed=0), "knn", points, labels, options, seed=0
  )
  folds = model_selection.StratifiedKFold(3, shuffle=True, random_state=0)
  cv = {
    k: model_selection.cross_val_score(
      classifiers.from_config("knn", options, seed=0).set_params(classifier__n_neighbors=k), points, labels, cv=folds
    ).mean()
    for k in options.grid.knn.n_neighbors
  }
  assert chosen == {"n_neighbors": max(cv, key=cv.get)} and head[-1].n_neighbors == chosen["n_neighbors"]
  options.search = False
  assert (
    classifiers.fit(classifiers.from_config("knn", options, seed=0), "knn", points, labels, options, seed=0)[1] is None
  )


@pytest.mark.parametrize(
  "key,value,message",
  [
    (
      "features",
      ("hog", "hog+surf"),
      "Unknown feature 'surf' in config.baseline.features entry 'hog+surf'; "
      "choose one of: hog, lbp, color_hist, gabor, sift_bow, raw_pixels, or several joined with '+'",
    ),
    (
      "classifiers",
      ("svm_rbf", "xgboost"),
      "Unknown config.baseline.classifiers entry 'xgboost'; choose one of: "
      "svm_linear, svm_rbf, random_forest, knn, naive_bayes, logistic.",
    ),
    ("color_hist.space", "lab", "Unknown config.baseline.color_hist.space='lab'; choose one of: hsv, rgb."),
  ],
)
def test_bad_config_values_fail_before_reading_data(key, value, message, tmp_path):
  config = _config(None, ("hog", "color_hist"))
  config.data.dataset = "folder"  # Never read: a folder dataset without a folder would fail differently.
  config.update_from_flattened_dict({f"baseline.{key}": value})
  with pytest.raises(ValueError, match=re.escape(message)):
    classical.run_baseline(config, str(tmp_path / "workdir"))
  assert not (tmp_path / "workdir").exists()


def test_baseline_mode_end_to_end_and_predict(digits_dir, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  deep = {"model": "vit_micro16", "split": "test", "step": 1500, "accuracy": 0.9806}
  (workdir / "results.json").write_text(json.dumps(deep))
  command = [
    sys.executable,
    "-m",
    "vitjax.main",
    "--config=configs/baseline_digits.py",
    f"--workdir={workdir}",
    "--mode=baseline",
    f"--config.data.data_dir={digits_dir}",
    "--config.baseline.features=('hog',)",
    "--config.baseline.classifiers=('svm_rbf',)",
  ]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  summary = json.loads((workdir / "baseline.json").read_text())
  (row,) = summary["results"]
  assert (row["feature"], row["classifier"], summary["num_eval_examples"]) == ("hog", "svm_rbf", 360)
  assert row["accuracy"] >= 0.95 and row["fit_seconds"] > 0 and row["predict_seconds"] > 0
  assert summary["best"] == {
    "feature": "hog",
    "classifier": "svm_rbf",
    "accuracy": row["accuracy"],
    "model": "baseline/model.skops",
  }
  assert summary["deep_model"] == {"source": "results.json", **{k: deep[k] for k in ("model", "step", "accuracy")}}
  assert re.search(r"deep model\s+vit_micro16\s+98.06%", run.stdout) and re.search(r"hog\s+svm_rbf\s+9\d\.", run.stdout)
  report = json.loads((workdir / "baseline" / "hog-svm_rbf" / "eval_test.json").read_text())
  assert report["accuracy"] == row["accuracy"] and report["num_examples"] == 360
  assert set(report["per_class"]["7"]) >= {"precision", "recall", "f1", "support"} and "weighted_f1" in report
  assert (workdir / "baseline" / "hog-svm_rbf" / "confusion_test.png").stat().st_size > 0
  assert json.loads((workdir / "results.json").read_text()) == deep  # The run's own files stay as they were.

  test_images, test_labels = _digits("test")
  names = classical.predict(str(workdir), list(test_images))
  assert np.mean(np.array(names) == test_labels.astype(str)) == pytest.approx(row["accuracy"])
  paths = []
  for i in range(4):
    paths.append(str(tmp_path / f"digit{i}.png"))
    Image.fromarray(test_images[i, ..., 0]).save(paths[-1])
  assert classical.predict(str(workdir / "baseline" / "model.skops"), paths) == names[:4]
