"""Mixup and CutMix of NaFlex batches: partners of similar aspect ratio, only the central overlap of two patch grids
mixed, per-image label weights equal to the share of patches that stayed the image's own, against a numpy loop."""

import numpy as np
import tensorflow as tf

from vitjax.data import mixing, patch_mixing

GRIDS = [(2, 3), (3, 2), (2, 2), (1, 4), (3, 3), (4, 1), (2, 4)]  # Odd: one image stays unmixed.
LENGTH, WIDTH = 12, 2


def _packed() -> tuple[np.ndarray, np.ndarray]:
  """Each image's patches hold 100 * (image + 1) + their index; padding after them; one-hot labels."""
  images = np.zeros((len(GRIDS), LENGTH, WIDTH + 3), np.float32)
  for i, (rows, cols) in enumerate(GRIDS):
    n = rows * cols
    images[i, :n, :WIDTH] = 100 * (i + 1) + np.arange(n)[:, None]
    images[i, :n, WIDTH:] = [(r, c, 1) for r in range(rows) for c in range(cols)]
  return images, np.eye(len(GRIDS), dtype=np.float32)


def _mixup_reference(images, labels, partner, lam):
  """Mixup of each image's central overlap with its partner's, by a loop over grid positions."""
  out, targets = images.copy(), labels.copy()
  for i, j in enumerate(partner):
    if i == j:
      continue
    (hi, wi), (hj, wj) = GRIDS[i], GRIDS[j]
    oh, ow = min(hi, hj), min(wi, wj)
    for r in range(oh):
      for c in range(ow):
        own = ((hi - oh) // 2 + r) * wi + (wi - ow) // 2 + c
        other = ((hj - oh) // 2 + r) * wj + (wj - ow) // 2 + c
        out[i, own, :WIDTH] = lam * images[i, own, :WIDTH] + (1 - lam) * images[j, other, :WIDTH]
    weight = 1 - (1 - lam) * oh * ow / (hi * wi)
    targets[i] = weight * labels[i] + (1 - weight) * labels[j]
  return out, targets


def test_partners_are_mutual_and_of_similar_aspect_ratio():
  shape = tf.constant(GRIDS)
  aspect = np.argsort([c / r for r, c in GRIDS], kind="stable")
  windows = {int(i): k // patch_mixing.WINDOW for k, i in enumerate(aspect)}
  pairings = set()
  for seed in range(20):
    partner = patch_mixing.partners(shape, tf.constant([seed, 0], tf.int64)).numpy()
    np.testing.assert_array_equal(partner[partner], np.arange(len(GRIDS)))
    assert (partner == np.arange(len(GRIDS))).sum() == 1
    assert all(windows[i] == windows[int(j)] for i, j in enumerate(partner))
    pairings.add(tuple(partner))
  assert len(pairings) > 3


def test_mixup_blends_only_the_central_overlap_and_weights_each_label_by_it():
  images, labels = _packed()
  seed = tf.constant([3, 1], tf.int64)
  mixed, targets = patch_mixing.mix_packed(tf.constant(images), tf.constant(labels), tf.constant(0.3), False, seed)
  pair_seed = tf.random.experimental.stateless_split(seed, 2)[0]
  partner = patch_mixing.partners(patch_mixing.grids(tf.constant(images)), pair_seed).numpy()
  expected, expected_targets = _mixup_reference(images, labels, partner, 0.3)
  np.testing.assert_allclose(mixed.numpy(), expected, rtol=1e-6)
  np.testing.assert_allclose(targets.numpy(), expected_targets, rtol=1e-6)
  np.testing.assert_allclose(targets.numpy().sum(axis=1), 1.0, rtol=1e-6)


def test_cutmix_pastes_a_box_of_the_partner_and_the_label_weight_is_its_share():
  images, labels = _packed()
  shares = []
  for seed in range(12):
    lam = 0.2 + 0.05 * seed
    mixed, targets = (t.numpy() for t in patch_mixing.mix_packed(images, labels, lam, True, [seed, 2]))
    np.testing.assert_array_equal(mixed[..., WIDTH:], images[..., WIDTH:])  # Coordinates, validity, padding.
    for i, (rows, cols) in enumerate(GRIDS):
      n = rows * cols
      pasted = mixed[i, :n, 0] != images[i, :n, 0]
      source = (mixed[i, :n, 0] // 100 - 1).astype(int)[pasted]
      assert len(set(source)) <= 1 and not (source == i).any()  # From one partner, whose label it takes.
      grid = pasted.reshape(rows, cols)
      if grid.any():
        r, c = np.nonzero(grid)
        assert grid[r.min() : r.max() + 1, c.min() : c.max() + 1].all()  # One rectangle.
        np.testing.assert_allclose(targets[i, source[0]], pasted.mean(), rtol=1e-6)
        shares.append(pasted.mean())
      np.testing.assert_allclose(targets[i, i], 1 - pasted.mean(), rtol=1e-6)
  assert len(set(np.round(shares, 3))) > 4


def test_naflex_batches_go_through_the_batch_mixer():
  images, labels = _packed()
  mixer = mixing.from_config({"mixup_alpha": 0.8, "cutmix_alpha": 1.0})
  batch = {"image": tf.constant(images), "labels": tf.constant(labels)}
  outs = [mixer(batch, tf.constant([s, 0], tf.int64)) for s in range(6)]
  assert any(not np.array_equal(out["image"].numpy(), images) for out in outs)
  for out in outs:
    np.testing.assert_array_equal(out["image"].numpy()[..., WIDTH:], images[..., WIDTH:])
    np.testing.assert_allclose(out["labels"].numpy().sum(axis=1), 1.0, rtol=1e-6)
