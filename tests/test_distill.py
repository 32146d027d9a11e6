"""Distillation losses by hand, a teacher loaded from checkpoints, and a student that learns from it."""

import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vitjax import checkpoints, losses, models, sharding
from vitjax.train import objectives
from vitjax.train.state import TrainState

RNG = np.random.default_rng(0)
STUDENT = jnp.asarray(RNG.normal(size=(6, 5)), jnp.float32)
TEACHER = jnp.asarray(RNG.normal(size=(6, 5)) * 3, jnp.float32)
LABELS = jax.nn.one_hot(jnp.asarray(RNG.integers(0, 5, 6)), 5)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_soft_loss_is_t_squared_kl_with_the_matching_gradient(temperature):
  p, q = _softmax(np.asarray(TEACHER) / temperature), _softmax(np.asarray(STUDENT) / temperature)
  expected = temperature**2 * np.sum(p * np.log(p / q), axis=-1)
  got = losses.soft_distillation(STUDENT, TEACHER, temperature=temperature)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  grad = jax.grad(lambda s: losses.soft_distillation(s, TEACHER, temperature=temperature).sum())(STUDENT)
  np.testing.assert_allclose(grad, temperature * (q - p), atol=1e-5)
  np.testing.assert_allclose(losses.soft_distillation(TEACHER, TEACHER, temperature=temperature), 0.0, atol=1e-6)
  # No gradient flows into the teacher.
  assert not np.any(jax.grad(lambda t: losses.soft_distillation(STUDENT, t, temperature=temperature).sum())(TEACHER))


def test_hard_loss_and_mixing():
  teacher_top = np.eye(5)[np.argmax(TEACHER, -1)]
  expected_hard = -np.sum(teacher_top * np.log(_softmax(np.asarray(STUDENT))), axis=-1)
  np.testing.assert_allclose(losses.hard_distillation(STUDENT, TEACHER), expected_hard, rtol=1e-5)
  base = losses.softmax_cross_entropy(STUDENT, LABELS)
  soft = losses.soft_distillation(STUDENT, TEACHER, temperature=2.0)
  mix = lambda **kw: losses.distillation(STUDENT, LABELS, TEACHER, base_loss=losses.softmax_cross_entropy, **kw)  # noqa
  np.testing.assert_allclose(mix(kind="soft", alpha=0.0, temperature=2.0), base, rtol=1e-6)
  np.testing.assert_allclose(mix(kind="soft", alpha=1.0, temperature=2.0), soft, rtol=1e-6)
  np.testing.assert_allclose(mix(kind="soft", alpha=0.3, temperature=2.0), 0.7 * base + 0.3 * soft, rtol=1e-6)
  # DeiT's hard distillation: the mean of the two cross-entropies.
  np.testing.assert_allclose(mix(kind="hard", alpha=0.5), 0.5 * base + 0.5 * expected_hard, rtol=1e-5)
  config = ml_collections.ConfigDict({"kind": "hard", "alpha": 0.5, "temperature": 1.0})
  np.testing.assert_allclose(
    objectives.distillation_loss(config, losses.softmax_cross_entropy)(STUDENT, LABELS, TEACHER),
    mix(kind="hard", alpha=0.5),
  )
  with pytest.raises(ValueError, match="Unknown config.distill.kind='medium'"):
    objectives.distillation_loss(ml_collections.ConfigDict({"kind": "medium"}), losses.softmax_cross_entropy)


def _init(model, seed):
  return jax.jit(functools.partial(model.init, train=False))(jax.random.key(seed), jnp.zeros((1, 16, 16, 3)))["params"]


TEACHER_ARCH = dict(num_layers=2, hidden_size=32, mlp_dim=64, num_heads=2)


def test_teacher_from_a_run_learns_a_student(tmp_path):
  teacher_model = models.build("vit_micro8", num_classes=5, **TEACHER_ARCH)
  params = _init(teacher_model, 0)
  params = jax.tree.map(lambda x: x + 0.3 * RNG.normal(size=x.shape).astype(np.float32), params)  # Non-zero head.
  manager = checkpoints.create_manager(str(tmp_path))
  checkpoints.save(
    manager, TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.1)), step=3, meta={"train_seconds": 1.0}
  )
  manager.wait_until_finished()
  config = ml_collections.ConfigDict(
    {
      "model": {"name": "vit_micro8", **TEACHER_ARCH},
      "checkpoint": str(tmp_path),
      "kind": "soft",
      "alpha": 1.0,
      "temperature": 2.0,
    }
  )
  mesh = sharding.make_mesh()
  teacher = objectives.teacher_from_config(
    config, objectives.Setting(losses.softmax_cross_entropy, 5, (16, 16, 3), sharding.replicated(mesh))
  )
  images = RNG.uniform(-1, 1, (16, 16, 16, 3)).astype(np.float32)
  expected = teacher_model.apply({"params": params}, images, train=False)
  placed = sharding.to_global({"image": images}, sharding.batch_sharding(mesh))["image"]
  np.testing.assert_allclose(teacher(placed), expected, rtol=1e-5, atol=1e-5)
  # Leading axes (pmap's device axis) are kept.
  assert teacher(images.reshape(8, 2, 16, 16, 3)).shape == (8, 2, 5)

  # A smaller student fitted to the teacher's soft targets alone gets closer to it.
  student_model = models.build("vit_micro8", num_classes=5, num_layers=1, hidden_size=16, mlp_dim=32, num_heads=2)
  student = _init(student_model, 2)
  loss_fn = objectives.distillation_loss(config, losses.softmax_cross_entropy)
  targets = teacher(images)
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state):
    def mean_loss(p):
      return loss_fn(student_model.apply({"params": p}, images, train=False), jnp.zeros_like(targets), targets).mean()

    value, grads = jax.value_and_grad(mean_loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  opt_state = tx.init(student)
  history = []
  for _ in range(20):
    student, opt_state, value = step(student, opt_state)
    history.append(float(value))
  assert history[-1] < 0.5 * history[0]
  agreement = np.mean(
    np.argmax(student_model.apply({"params": student}, images, train=False), -1) == np.argmax(expected, -1)
  )
  assert agreement >= 0.75


def test_teacher_from_a_public_file_needs_its_head(tmp_path):
  model = models.build("vit_micro8", num_classes=5, **TEACHER_ARCH)
  params = _init(model, 0)
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  np.savez(tmp_path / "teacher.npz", **{k: np.asarray(v) for k, v in flat.items()})
  teacher = objectives.load_teacher(
    ml_collections.ConfigDict({"name": "vit_micro8", **TEACHER_ARCH}),
    str(tmp_path / "teacher.npz"),
    num_classes=5,
    image_shape=(16, 16, 3),
  )
  images = RNG.uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
  np.testing.assert_allclose(teacher(images), model.apply({"params": params}, images, train=False), atol=1e-6)
  del flat["head/kernel"]
  np.savez(tmp_path / "headless.npz", **{k: np.asarray(v) for k, v in flat.items()})
  with pytest.raises(ValueError, match=r"head/kernel \(32, 5\) is missing from the checkpoint"):
    objectives.load_teacher(
      ml_collections.ConfigDict({"name": "vit_micro8", **TEACHER_ARCH}),
      str(tmp_path / "headless.npz"),
      num_classes=5,
      image_shape=(16, 16, 3),
    )


def test_an_ensemble_teacher_averages_its_members_logits(tmp_path):
  model = models.build("vit_micro8", num_classes=5, **TEACHER_ARCH)
  members = [_init(model, seed) for seed in (0, 1)]
  paths = []
  for i, params in enumerate(members):
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    flat["head/kernel"] = RNG.normal(size=flat["head/kernel"].shape).astype(np.float32)  # The head starts at zero.
    members[i] = flax.traverse_util.unflatten_dict(flat, sep="/")
    paths.append(str(tmp_path / f"member{i}.npz"))
    np.savez(paths[-1], **{k: np.asarray(v) for k, v in flat.items()})
  teacher = objectives.load_teacher(
    ml_collections.ConfigDict({"name": "vit_micro8", **TEACHER_ARCH}),
    f"{paths[0]}, {paths[1]}",
    num_classes=5,
    image_shape=(16, 16, 3),
  )
  images = RNG.uniform(-1, 1, (2, 4, 16, 16, 3)).astype(np.float32)  # Extra leading axes are kept.
  each = [model.apply({"params": p}, images.reshape(8, 16, 16, 3), train=False) for p in members]
  expected = ((each[0] + each[1]) / 2).reshape(2, 4, 5)
  np.testing.assert_allclose(teacher(images), expected, atol=1e-5)
  assert np.abs(each[0] - each[1]).max() > 1e-2  # The members differ: the average is not one of them.
