"""Preprocessing ops: every op the same eagerly and inside tf.data for one seed, and each doing what it must."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from vitjax.data import augment, decoding, geometric, preprocess

RNG = np.random.default_rng(0)
IMAGE = (RNG.random((40, 48, 3)) * 120 + np.linspace(0, 100, 48)[None, :, None]).astype(np.uint8)
SEED = tf.constant([7, 11], tf.int64)


def _encode(array: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
  return buffer.getvalue()


def _coordinates(height=40, width=48) -> np.ndarray:
  """An image whose pixel (y, x) holds (y, x, 7): every crop reveals where it came from."""
  y, x = np.mgrid[:height, :width]
  return np.stack([y, x, np.full_like(y, 7)], axis=-1).astype(np.uint8)


def _run_eagerly(spec, image, seed=SEED):
  """The op's image (or, after `patchify`, its mapping of arrays)."""
  return tf.nest.map_structure(np.asarray, preprocess.parse(spec)({"image": tf.constant(image)}, seed)["image"])


def _run_in_dataset(spec, image, seeds):
  """The op on ``image`` under each seed, inside one traced tf.data map."""
  op = preprocess.parse(spec)
  image = tf.constant(image)
  ds = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(lambda seed: op({"image": image}, seed)["image"])
  return [tf.nest.map_structure(np.asarray, x) for x in ds]


FLOAT_IMAGE = (IMAGE.astype(np.float32) - 128) / 64
GRAY = IMAGE[..., :1]
JPEG, PNG = _encode(IMAGE, "JPEG"), _encode(IMAGE, "PNG")
# (spec, input): together they name every registered op (checked below).
CASES = [
  ("decode", JPEG),
  ("decode(channels=1)", PNG),
  ("decode_jpeg_and_inception_crop(24)", JPEG),
  ("decode_jpeg_and_inception_crop(24)", PNG),
  ("resize(20)", IMAGE),
  ("resize((16, 24), method='nearest')", IMAGE),
  ("resize_small(20)", IMAGE),
  ("to_rgb", GRAY),
  ("flip_lr", IMAGE),
  ("flip_ud", IMAGE),
  ("pad_and_crop(4)", IMAGE),
  ("random_crop(20)", IMAGE),
  ("center_crop(20)", IMAGE),
  ("inception_crop(24)", IMAGE),
  ("inception_crop(area_min=0.3, ratio_min=0.5, ratio_max=2.0)", IMAGE),
  ("rotate(15)", IMAGE),
  ("color_jitter(0.4, 0.4, 0.4, 0.1)", IMAGE),
  ("randaugment(2, 15)", IMAGE),
  ("randaugment(3, 9)", IMAGE),
  ("autoaugment", IMAGE),
  ("random_erasing(1.0)", FLOAT_IMAGE),
  ("random_erasing(1.0, value=0)", IMAGE),
  ("gaussian_noise(0.1)", FLOAT_IMAGE),
  ("gaussian_noise(3.0)", IMAGE),
  ("value_range(-1, 1)", IMAGE),
  ("normalize", IMAGE),
  ("resize_to_seq(20, 8)", IMAGE),
  ("resize_to_seq(20, 8)|value_range|patchify(8, 20)", IMAGE),
  ("decode|inception_crop(32)|flip_lr|randaugment(2, 15)|random_erasing(0.5)|value_range", JPEG),
]


def test_cases_cover_every_registered_op():
  used = {name for spec, _ in CASES for name in preprocess.op_names(spec)}
  assert used == set(preprocess.names())


@pytest.mark.parametrize("spec, image", CASES, ids=[spec for spec, _ in CASES])
def test_op_is_the_same_eagerly_and_in_tf_data(spec, image):
  seeds = [SEED, tf.constant([3, 5], tf.int64)]
  for seed, traced in zip(seeds, _run_in_dataset(spec, image, seeds)):
    for eager, graph in zip(tf.nest.flatten(_run_eagerly(spec, image, seed)), tf.nest.flatten(traced)):
      assert eager.shape == graph.shape and eager.dtype == graph.dtype
      np.testing.assert_allclose(eager.astype(np.float64), graph.astype(np.float64), atol=1e-5)


@pytest.mark.parametrize("name", sorted(augment.RANDAUGMENT_OPS))
def test_each_randaugment_op_is_the_same_eagerly_and_in_tf_data(name):
  op = augment.RANDAUGMENT_OPS[name]
  level = tf.constant(15.0)
  eager = op(tf.constant(IMAGE), level, SEED).numpy()
  graph = next(iter(tf.data.Dataset.from_tensors(tf.constant(IMAGE)).map(lambda x: op(x, level, SEED)))).numpy()
  np.testing.assert_array_equal(eager, graph)
  assert eager.shape == IMAGE.shape and eager.dtype == np.uint8
  if name not in ("Solarize",):  # Solarize's threshold at magnitude 15 is above 255: no pixel changes.
    assert not np.array_equal(eager, IMAGE), name


def test_randaugment_and_autoaugment_vary_with_the_seed_and_zero_layers_is_identity():
  outputs = {_run_eagerly("randaugment(2, 15)", IMAGE, tf.constant([s, 0], tf.int64)).tobytes() for s in range(24)}
  assert len(outputs) > 12
  outputs = {_run_eagerly("autoaugment", IMAGE, tf.constant([s, 0], tf.int64)).tobytes() for s in range(24)}
  assert len(outputs) > 8
  np.testing.assert_array_equal(_run_eagerly("randaugment(0, 15)", IMAGE), IMAGE)
  with pytest.raises(ValueError, match="uint8 RGB"):
    _run_eagerly("value_range|randaugment(2, 9)", IMAGE)


def test_autoaugment_policy_is_the_imagenet_policy():
  assert len(augment.IMAGENET_POLICY) == 25 and all(len(sub) == 2 for sub in augment.IMAGENET_POLICY)
  assert augment.IMAGENET_POLICY[0] == (("Posterize", 0.4, 8), ("Rotate", 0.6, 9))
  assert all(name in augment.AUTOAUGMENT_OPS for sub in augment.IMAGENET_POLICY for name, _, _ in sub)
  # The paper's posterize keeps 4..8 bits: level 8 keeps 7 bits, clearing only the lowest one.
  posterized = augment.AUTOAUGMENT_OPS["Posterize"](tf.constant(IMAGE), tf.constant(8.0), SEED).numpy()
  np.testing.assert_array_equal(posterized, IMAGE & 0b11111110)


def test_image_ops_match_pil():
  pil = Image.fromarray(IMAGE)
  image = tf.constant(IMAGE)
  exact = [
    (augment.equalize(image), ImageOps.equalize(pil)),
    (augment.autocontrast(image), ImageOps.autocontrast(pil)),
    (augment.invert(image), ImageOps.invert(pil)),
    (augment.posterize(image, 3), ImageOps.posterize(pil, 3)),
    (augment.solarize(image, 100), ImageOps.solarize(pil, 100)),
    (augment.brightness(image, 1.3), ImageEnhance.Brightness(pil).enhance(1.3)),
    (augment.sharpness(image, 1.8), ImageEnhance.Sharpness(pil).enhance(1.8)),
  ]
  for ours, theirs in exact:
    np.testing.assert_array_equal(ours.numpy(), np.asarray(theirs))
  for ours, theirs in [
    (augment.color(image, 0.3), ImageEnhance.Color(pil).enhance(0.3)),
    (augment.contrast(image, 1.7), ImageEnhance.Contrast(pil).enhance(1.7)),
  ]:
    assert np.abs(ours.numpy().astype(int) - np.asarray(theirs).astype(int)).max() <= 1
  square = IMAGE[:40, :40]
  np.testing.assert_array_equal(augment.rotate(tf.constant(square), 90.0).numpy(), np.rot90(square))
  moved = augment.translate(image, 5.0, 0.0).numpy()
  np.testing.assert_array_equal(moved[:, 5:], IMAGE[:, :-5])
  assert (moved[:, :5] == augment.FILL).all()


def test_flips_reverse_columns_or_rows_with_probability_half():
  for spec, flipped in (("flip_lr", IMAGE[:, ::-1]), ("flip_ud", IMAGE[::-1])):
    outcomes = [_run_eagerly(spec, IMAGE, tf.constant([s, 1], tf.int64)) for s in range(64)]
    is_flipped = [np.array_equal(o, flipped) for o in outcomes]
    assert all(f or np.array_equal(o, IMAGE) for f, o in zip(is_flipped, outcomes))
    assert 16 <= sum(is_flipped) <= 48


def test_crops_take_the_right_windows():
  coords = _coordinates()
  np.testing.assert_array_equal(_run_eagerly("center_crop(20)", coords), coords[10:30, 14:34])
  np.testing.assert_array_equal(_run_eagerly("center_crop((10, 30))", coords), coords[15:25, 9:39])
  for s in range(10):
    crop = _run_eagerly("random_crop(20)", coords, tf.constant([s, 2], tf.int64))
    top, left = crop[0, 0, :2]
    np.testing.assert_array_equal(crop, coords[top : top + 20, left : left + 20])
    shifted = _run_eagerly("pad_and_crop(4)", coords, tf.constant([s, 2], tf.int64))
    padded = np.pad(coords, [(4, 4), (4, 4), (0, 0)])
    assert shifted.shape == coords.shape
    assert any(np.array_equal(shifted, padded[dy : dy + 40, dx : dx + 48]) for dy in range(9) for dx in range(9))
  assert _run_eagerly("resize_small(20)", IMAGE).shape == (20, 24, 3)
  assert _run_eagerly("resize_small(20)", IMAGE.transpose(1, 0, 2)).shape == (24, 20, 3)
  assert _run_eagerly("resize((16, 24))", IMAGE).shape == (16, 24, 3)


def test_inception_crop_area_and_aspect_stay_in_range_over_many_draws():
  coords = _coordinates()
  areas, ratios = [], []
  for s in range(300):
    crop = _run_eagerly(
      "inception_crop(area_min=0.2, area_max=0.6, ratio_min=0.5, ratio_max=2.0)", coords, tf.constant([s, 3], tf.int64)
    )
    top, left = crop[0, 0, :2]
    np.testing.assert_array_equal(crop, coords[top : top + crop.shape[0], left : left + crop.shape[1]])
    areas.append(crop.shape[0] * crop.shape[1] / (40 * 48))
    ratios.append(crop.shape[1] / crop.shape[0])
  areas, ratios = np.array(areas), np.array(ratios)
  whole = areas == 1.0  # After 10 failed attempts the op falls back to the whole image.
  assert whole.mean() < 0.05
  assert areas[~whole].min() >= 0.2 - 0.03 and areas[~whole].max() <= 0.6 + 0.03
  assert ratios[~whole].min() >= 0.5 * 0.85 and ratios[~whole].max() <= 2.0 / 0.85
  assert areas[~whole].max() - areas[~whole].min() > 0.25  # The whole range is used.
  assert _run_eagerly("inception_crop(24)", IMAGE).shape == (24, 24, 3)


def test_fused_jpeg_decode_and_crop_matches_decode_then_crop():
  for s in range(5):
    seed = tf.constant([s, 4], tf.int64)
    fused = decoding.decode_jpeg_and_inception_crop()({"image": tf.constant(JPEG)}, seed)["image"].numpy()
    decoded = tf.io.decode_jpeg(JPEG, channels=3)
    separate = geometric.inception_crop()({"image": decoded}, seed)["image"].numpy()
    assert fused.shape == separate.shape
    assert np.abs(fused.astype(int) - separate.astype(int)).mean() < 2.0
  np.testing.assert_array_equal(_run_eagerly("decode", PNG), IMAGE)


def test_to_rgb_repeats_gray_and_drops_alpha():
  np.testing.assert_array_equal(_run_eagerly("to_rgb", GRAY), np.repeat(GRAY, 3, axis=-1))
  rgba = np.concatenate([IMAGE, np.full(IMAGE.shape[:2] + (1,), 9, np.uint8)], axis=-1)
  np.testing.assert_array_equal(_run_eagerly("to_rgb", rgba), IMAGE)


def test_rotate_keeps_the_centre_and_zero_angle_is_identity():
  np.testing.assert_array_equal(_run_eagerly("rotate(0)", IMAGE), IMAGE)
  square = np.zeros((41, 41, 3), np.uint8)
  square[20, 20] = 200
  rotated = _run_eagerly("rotate(20, method='nearest')", square)
  assert rotated[20, 20, 0] == 200 and rotated.sum() == square.sum()
  turned = [_run_eagerly("rotate(20)", IMAGE, tf.constant([s, 5], tf.int64)) for s in range(4)]
  assert len({t.tobytes() for t in turned}) == 4


def test_color_jitter_scales_brightness_and_leaves_gray_hue_alone():
  dim = (IMAGE // 2).astype(np.uint8)  # No clipping at 1.4x.
  for s in range(8):
    out = _run_eagerly("color_jitter(0.4, 0, 0, 0)", dim, tf.constant([s, 6], tf.int64)).astype(float)
    factor = out.sum() / dim.sum()
    assert 0.6 - 0.01 <= factor <= 1.4 + 0.01
    bright = dim > 20
    np.testing.assert_allclose(out[bright] / dim[bright], factor, atol=0.04)
  gray = np.repeat(GRAY, 3, axis=-1)
  np.testing.assert_allclose(_run_eagerly("color_jitter(0, 0, 0.4, 0.1)", gray), gray, atol=1)


def test_random_erasing_changes_only_one_rectangle():
  for s in range(10):
    seed = tf.constant([s, 8], tf.int64)
    out = _run_eagerly("random_erasing(1.0, area_min=0.1, area_max=0.3)", FLOAT_IMAGE, seed)
    changed = np.any(out != FLOAT_IMAGE, axis=-1)
    rows, cols = np.where(changed)
    box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert box.all() and changed.sum() == box.size  # Exactly a filled rectangle.
    assert 0.1 * 0.5 <= box.size / changed.size <= 0.3 * 1.2
  zero = _run_eagerly("random_erasing(1.0, value=0)", IMAGE)
  assert ((zero == 0) | (zero == IMAGE)).all() and (zero == 0).any()
  np.testing.assert_array_equal(_run_eagerly("random_erasing(0.0)", FLOAT_IMAGE), FLOAT_IMAGE)


def test_gaussian_noise_has_the_requested_spread_and_ranges_normalise():
  noise = _run_eagerly("gaussian_noise(0.5)", np.zeros((64, 64, 3), np.float32))
  assert abs(noise.mean()) < 0.02 and abs(noise.std() - 0.5) < 0.02
  extremes = np.array([[[0, 255, 0]]], np.uint8)
  np.testing.assert_allclose(_run_eagerly("value_range(-1, 1)", extremes), [[[-1, 1, -1]]])
  normalized = _run_eagerly("normalize(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))", extremes)
  np.testing.assert_allclose(normalized, [[[-2, 2, -2]]])


def test_bad_specs_name_the_problem():
  with pytest.raises(ValueError, match=r"Unknown preprocessing op 'fliplr'.*flip_lr"):
    preprocess.parse("resize(32)|fliplr")
  with pytest.raises(ValueError, match=r"Bad arguments for preprocessing op 'inception_crop\(area_min=2\)'"):
    preprocess.parse("inception_crop(area_min=2)")
  with pytest.raises(ValueError, match="Unknown AutoAugment policy 'cifar'"):
    preprocess.parse("autoaugment('cifar')")
  assert preprocess.decodes("decode|resize(8)") and preprocess.decodes(" decode_jpeg_and_inception_crop(8)")
  assert not preprocess.decodes("resize(8)|decode") and not preprocess.decodes("")
