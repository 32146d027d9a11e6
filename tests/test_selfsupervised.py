"""Self-supervised objectives: rotation labels, NT-Xent against a hand computation, SimCLR's views, and MAE's
masking, its loss on masked patches only and its encoder pass on the visible tokens alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax import losses, models
from vitjax.configs import common
from vitjax.train import masked, objectives, selfsupervised


def test_rotation_labels_match_the_rotations():
  images = jax.random.normal(jax.random.key(0), (32, 6, 6, 3))
  turned, turns = jax.jit(selfsupervised.rotate_batch)(images, jax.random.key(1))
  assert set(np.asarray(turns).tolist()) == {0, 1, 2, 3}
  for image, out, k in zip(np.asarray(images), np.asarray(turned), np.asarray(turns)):
    np.testing.assert_array_equal(out, np.rot90(image, k, axes=(0, 1)))
  # One quarter turn counter-clockwise moves the top-right pixel to the top-left.
  one = np.asarray(images[0])
  np.testing.assert_array_equal(np.rot90(one, 1, axes=(0, 1))[0, 0], one[0, -1])


def test_nt_xent_equals_a_hand_computation():
  z1 = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
  z2 = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
  temperature = 0.5
  z = np.concatenate([z1, z2])
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  losses_by_hand, hits = [], []
  for i, positive in enumerate([2, 3, 0, 1]):
    others = [j for j in range(4) if j != i]
    logits = np.array([z[i] @ z[j] / temperature for j in others])
    losses_by_hand.append(-(z[i] @ z[positive] / temperature - np.log(np.exp(logits).sum())))
    hits.append(others[int(np.argmax(logits))] == positive)
  loss, agreement = selfsupervised.nt_xent(jnp.asarray(z1), jnp.asarray(z2), temperature)
  np.testing.assert_allclose(loss, np.mean(losses_by_hand), rtol=1e-5)
  assert agreement == np.mean(hits) == 0.75  # z1[1] is as near to z2[0] as to its pair: the first one wins.


def test_simclr_views_are_keyed_and_keep_the_shape():
  images = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3), minval=-1, maxval=1)
  view = jax.jit(lambda key: selfsupervised.augment_view(images, key, min_scale=0.3, jitter=0.4))
  first, again, second = view(jax.random.key(1)), view(jax.random.key(1)), view(jax.random.key(2))
  assert first.shape == images.shape
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, second)
  # The full crop without jitter is the image itself.
  full = selfsupervised.random_resized_crop(images[0], jax.random.key(3), min_scale=1.0)
  assert full.shape == images[0].shape


def test_mae_masks_exactly_the_ratio_of_every_example():
  keep_ids, restore, mask = masked.random_masking(jax.random.key(0), 5, 16, 0.75)
  np.testing.assert_array_equal(mask.sum(axis=1), np.full(5, 12.0))
  assert keep_ids.shape == (5, 4)
  for ids, row, order in zip(np.asarray(keep_ids), np.asarray(mask), np.asarray(restore)):
    assert set(np.flatnonzero(row == 0)) == set(ids)
    np.testing.assert_array_equal(np.sort(order), np.arange(16))
  assert not np.array_equal(mask[0], mask[1])  # A fresh choice per example.


def test_mae_loss_ignores_visible_patches():
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  _, _, mask = masked.random_masking(jax.random.key(1), 2, 4, 0.5)
  predicted = jax.random.normal(jax.random.key(2), (2, 4, 48))
  reconstruction = jax.jit(lambda p: masked.reconstruction_loss(p, images, mask, 4))
  loss = reconstruction(predicted)
  np.testing.assert_allclose(reconstruction(predicted + 10.0 * (1.0 - mask)[..., None]), loss, rtol=1e-6)
  assert reconstruction(predicted + 10.0 * mask[..., None]) > loss + 1.0
  # Against numpy: the normalised patches of the masked places.
  patches = np.asarray(images).reshape(2, 2, 4, 2, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 4, 48)
  target = (patches - patches.mean(-1, keepdims=True)) / np.sqrt(patches.var(-1, keepdims=True) + 1e-6)
  per_patch = ((np.asarray(predicted) - target) ** 2).mean(-1)
  np.testing.assert_allclose(loss, (per_patch * np.asarray(mask)).sum() / np.asarray(mask).sum(), rtol=1e-5)


@pytest.mark.parametrize("posemb, classifier", [("sincos2d", "gap"), ("learn", "token")])
def test_mae_encoder_sees_only_the_visible_patches(posemb, classifier):
  config = common.get_base_config()
  config.model.update(name="vit_micro4", classifier=classifier, posemb=posemb)
  model = masked.check_plain_vit(models.from_config(config.model, num_classes=10), "vit_micro4")
  params = models.init_variables(model, jax.random.key(0), image_shape=(8, 8, 3))["params"]
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  keep_ids, _, mask = masked.random_masking(jax.random.key(2), 2, 4, 0.5)
  encode = jax.jit(
    lambda x: masked.encode_visible(
      model.apply, params, x, keep_ids, jax.random.key(3), num_patches=4, learned=posemb == "learn"
    )
  )
  tokens = encode(images)
  assert tokens.shape == (2, 2 + (classifier == "token"), model.hidden_size)
  pixel_mask = np.asarray(mask).reshape(2, 2, 2)[:, :, None, :, None, None]
  pixel_mask = np.broadcast_to(pixel_mask, (2, 2, 4, 2, 4, 3)).reshape(2, 8, 8, 3)
  np.testing.assert_allclose(encode(images + 5.0 * pixel_mask), tokens, atol=1e-5)  # Masked pixels: no effect.
  assert not np.allclose(encode(images + 5.0 * (1.0 - pixel_mask)), tokens, atol=1e-3)


def test_ssl_objectives_check_their_options():
  config = common.get_base_config()
  config.model.update(name="resnet18")
  setting = objectives.Setting(losses.from_config(config.loss), 10, (16, 16, 3))
  config.objective = "mae"
  with pytest.raises(ValueError, match="needs a plain ViT"):
    objectives.from_config(config, setting)
  config.ssl.mask_ratio = 1.0
  with pytest.raises(ValueError, match="config.ssl.mask_ratio=1.0 must lie strictly between 0 and 1"):
    objectives.from_config(config, setting)
  config.objective, config.ssl.temperature = "simclr", 0.0
  with pytest.raises(ValueError, match="config.ssl.temperature=0.0 must be positive"):
    objectives.from_config(config, setting)
