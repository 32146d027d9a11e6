"""NaFlex through the whole recipe: sequence lengths in the data config, batches that cycle through them and
resume exactly, the canvas digits, and one run trained, evaluated at three lengths, served and explained at any
aspect ratio."""

import ml_collections
import numpy as np
import pytest

from configs import naflex_digits
from vitjax import data
from vitjax.data import canvas, patches, seqlens
from vitjax.deploy.classifier import Classifier
from vitjax.errors import ConfigError
from vitjax.explain import report as explain_report
from vitjax.models import naflexvit
from vitjax.train.loop import train_and_evaluate

SPEC = "decode(channels=1)|resize_to_seq({seq_len}, 4)|value_range(-1, 1)|patchify(4, {seq_len})"


@pytest.fixture(scope="module")
def canvas_dir(tmp_path_factory) -> str:
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  data.prepare(data.builder_by_name("vitjax_digits_canvas", data_dir=data_dir))
  return data_dir


def data_config(canvas_dir: str, **updates) -> ml_collections.ConfigDict:
  config = naflex_digits.get_config().data
  config.update_from_flattened_dict({"data_dir": canvas_dir, **updates})
  return config


def test_lengths_fill_the_specs_and_mistakes_fail_naming_the_fix():
  config = naflex_digits.get_config().data
  at36 = seqlens.at_seq_len(config, 36)
  assert at36.pp_eval == "decode(channels=1)|resize_to_seq(36, 4)|value_range(-1, 1)|patchify(4, 36)"
  assert at36.seq_lens == () and seqlens.at_seq_len(at36) is at36
  assert seqlens.at_seq_len(config).pp_eval == SPEC.format(seq_len=64)  # The longest by default.
  for updates, message in [
    (dict(seq_lens=()), r"pp_train has \{seq_len\}: list the lengths in config.data.seq_lens"),
    (dict(pp_eval="resize(32)"), r"needs \{seq_len\} in config.data.pp_eval"),
    (dict(seq_lens=(16, 0)), r"seq_lens=\(16, 0\) must be positive whole numbers"),
  ]:
    broken = naflex_digits.get_config().data
    broken.update(updates)
    with pytest.raises(ConfigError, match=message):
      data.from_config(broken)
  with pytest.raises(ConfigError, match="seq_lens is empty: not NaFlex"):
    seqlens.at_seq_len(at36, 16)


def test_canvas_digits_keep_their_aspect_ratios_and_are_the_same_on_every_call():
  digit = (np.arange(64).reshape(8, 8, 1) * 3).astype(np.uint8)
  first, again = (canvas.place(digit, np.random.default_rng([1, 2])) for _ in range(2))
  np.testing.assert_array_equal(first, again)
  assert first.shape[:2] in canvas.CANVASES and first.sum() == 4 * digit.astype(int).sum()
  shapes = {canvas.place(digit, np.random.default_rng(i)).shape[:2] for i in range(40)}
  assert shapes == set(canvas.CANVASES)


def test_batches_cycle_through_the_lengths_and_resume_exactly(canvas_dir):
  config = data_config(canvas_dir, seq_lens=(4, 9, 16))
  source = data.from_config(config)
  stream = data.train_dataset(source, config, batch_size=4, seed=3).as_numpy_iterator()
  batches = [next(stream) for _ in range(5)]
  assert [b["image"].shape for b in batches] == [(4, n, 16 + 3) for n in (4, 9, 16, 4, 9)]
  shapes = set()
  for batch in batches:  # Each image is a whole grid of patches at the front of its sequence, padding after it.
    unpacked = {k: np.asarray(v) for k, v in naflexvit.unpack(batch["image"]).items()}
    counts, grids = unpacked["patch_valid"].sum(axis=1), unpacked["patch_coord"].max(axis=1) + 1
    np.testing.assert_array_equal(counts, grids.prod(axis=1))
    assert (unpacked["patch_valid"][:, : counts.min()]).all()
    shapes.update(map(tuple, grids))
  assert len(shapes) > 3  # Wide, tall and square images.
  resumed = next(data.train_dataset(source, config, batch_size=4, seed=3, start_batch=4).as_numpy_iterator())
  np.testing.assert_array_equal(resumed["image"], batches[4]["image"])
  mixed_config = data_config(canvas_dir, seq_lens=(4, 9, 16), **{"mixup.cutmix_alpha": 1.0})
  mixed = data.train_dataset(source, mixed_config, batch_size=4, seed=3).as_numpy_iterator()
  changed = []
  for plain, cut in zip(batches[:3], mixed):  # CutMix inside each batch, at its length.
    np.testing.assert_array_equal(cut["image"][..., -3:], plain["image"][..., -3:])
    np.testing.assert_allclose(cut["labels"].sum(axis=1), 1.0, rtol=1e-6)
    changed.append(not np.array_equal(cut["labels"], plain["labels"]))
  assert any(changed)


def test_a_skipped_record_that_ended_a_batch_is_filled_at_the_length_of_that_batch(canvas_dir):
  crop = SPEC.replace("decode(channels=1)", "decode(channels=1)|random_crop(20)")  # Fails on 16-pixel sides.
  config = data_config(canvas_dir, seq_lens=(4, 9), pp_train=crop, strict=False)
  stream = data.train_dataset(data.from_config(config), config, batch_size=4, seed=3).as_numpy_iterator()
  batches = [next(stream) for _ in range(8)]
  assert [b["image"].shape[1] for b in batches] == [4, 9] * 4
  skipped = np.stack([b["_skipped"] for b in batches])
  assert skipped[:, -1].any() and skipped.sum() < skipped.size  # Some of them ended a batch.
  for batch in batches:
    valid = np.asarray(naflexvit.unpack(batch["image"])["patch_valid"])
    assert valid.any(axis=1).all()


def test_one_run_trains_at_two_lengths_evaluates_at_three_serves_and_explains_any_aspect_ratio(canvas_dir, tmp_path):
  config = naflex_digits.get_config("runlocal")
  config.data.data_dir = canvas_dir
  config.data.seq_lens = (16, 64)
  config.total_steps, config.eval_every = 2, 2  # One step at each length: two compiled train steps.
  del config.evals.seq36  # Evaluated at 16, 64 (the default) and 100: a length it never trained at.
  results = train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 2 and results["num_examples"] == 64
  for prefix in ("", "seq16_", "seq100_"):
    assert 0.0 <= results[f"{prefix}accuracy"] <= 1.0 and np.isfinite(results[f"{prefix}loss"])
  assert len({results[f"{p}loss"] for p in ("", "seq16_", "seq100_")}) == 3  # Three different inputs.
  wide, tall = np.full((12, 80), 200, np.uint8), np.full((90, 20, 3), 50, np.uint8)
  for seq_len in (None, 16):  # The run's longest length, and another.
    classifier = Classifier.load(str(tmp_path), seq_len=seq_len)
    packed = np.stack([classifier.preprocessing.pixels(image) for image in (wide, tall)])
    assert packed.shape == (2, seq_len or 64, 4 * 4 + 3)
    grids = [tuple(c.max(axis=0) + 1) for c in np.asarray(naflexvit.unpack(packed)["patch_coord"])]
    expected = [tuple(patches.grid_for_seq(*image.shape[:2], 4, seq_len or 64).numpy()) for image in (wide, tall)]
    assert grids == expected and grids[0][1] >= 4 * grids[0][0] and grids[1][0] >= 2 * grids[1][1]  # Not squashed.
    probabilities = classifier.predict([wide, tall])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  config.explain.update(methods=("gradients",), num_images=1)  # The first test canvas, at its own ratio.
  explained = explain_report.run_explain(config, str(tmp_path))
  assert len(explained["images"]) == 1 and set(explained["summary"]) == {"gradients", "random"}
  with pytest.raises(ConfigError, match="applies to a NaFlex run's workdir"):
    Classifier.load(str(tmp_path / "checkpoints" / "missing.npz"), seq_len=16)
