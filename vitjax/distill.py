"""Knowledge distillation (Hinton et al. 2015; DeiT, Touvron et al. 2021): a student trained on a teacher's logits.

`make_loss_fn(config.distill, base_loss)` gives `loss(student_logits, labels, teacher_logits)` per example, and
`load_teacher(...)` turns a model name and checkpoint into `teacher_logits(images)`, so the loop computes the
teacher's view of the very images (augmentations, Mixup) the student sees.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vitjax import models, pretrained

KINDS = ("soft", "hard")
DistillLossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def soft_loss(student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float) -> jax.Array:
  """Per-example KL(teacher || student) between the temperature-softened distributions, times T^2.

  The T^2 keeps the gradient's scale independent of T (Hinton et al.): it is T (softmax(s/T) - softmax(t/T)).
  """
  log_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  log_teacher = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature)
  kl = jnp.sum(jnp.exp(log_teacher) * (log_teacher - log_student), axis=-1)
  return temperature**2 * kl


def hard_loss(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
  """Per-example cross-entropy against the teacher's top class (DeiT's hard-label distillation)."""
  targets = jax.nn.one_hot(jnp.argmax(teacher_logits, axis=-1), student_logits.shape[-1])
  return optax.softmax_cross_entropy(student_logits.astype(jnp.float32), targets)


def loss(
  student_logits: jax.Array,
  labels: jax.Array,
  teacher_logits: jax.Array,
  *,
  base_loss: Callable[[jax.Array, jax.Array], jax.Array],
  kind: str = "soft",
  alpha: float = 0.5,
  temperature: float = 1.0,
) -> jax.Array:
  """Per-example (1 - alpha) * base_loss(student, labels) + alpha * distillation loss of `kind`.

  DeiT's hard distillation is kind='hard', alpha=0.5; Hinton's soft targets are kind='soft' with T of 1-4.
  """
  if kind not in KINDS:
    raise ValueError(f"Unknown distillation kind {kind!r}; choose one of: {', '.join(KINDS)}.")
  distill = (
    soft_loss(student_logits, teacher_logits, temperature=temperature)
    if kind == "soft"
    else hard_loss(student_logits, teacher_logits)
  )
  return (1.0 - alpha) * base_loss(student_logits, labels) + alpha * distill


def make_loss_fn(
  config: ml_collections.ConfigDict, base_loss: Callable[[jax.Array, jax.Array], jax.Array]
) -> DistillLossFn:
  """`loss` bound to `config` (the `config.distill` block: kind, alpha, temperature) and the run's own loss."""
  if config.kind not in KINDS:
    raise ValueError(f"Unknown config.distill.kind={config.kind!r}; choose one of: {', '.join(KINDS)}.")

  def loss_fn(student_logits: jax.Array, labels: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    return loss(
      student_logits,
      labels,
      teacher_logits,
      base_loss=base_loss,
      kind=config.kind,
      alpha=config.alpha,
      temperature=config.temperature,
    )

  return loss_fn


def load_teacher(
  model_name: str,
  checkpoint: str,
  *,
  num_classes: int,
  image_shape: tuple[int, int, int],
  overrides: dict[str, Any] | None = None,
  sharding: jax.sharding.Sharding | None = None,
) -> Callable[[jax.Array], jax.Array]:
  """`teacher_logits(images)`: the model `model_name` with every variable from `checkpoint`, in eval mode.

  `checkpoint` is anything `pretrained.load_variables` reads (a public `.npz` with its head, or a run of this
  project). `sharding` (e.g. replicated over the mesh) places the teacher's variables once; images may carry
  extra leading axes (pmap's device axis), which the logits keep.
  """
  model = models.build(model_name, num_classes=num_classes, **(overrides or {}))
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False))
  variables, _ = pretrained.load_variables(checkpoint, abstract)
  variables = jax.device_put(variables, sharding)
  apply = jax.jit(lambda v, images: model.apply(v, images, train=False))

  def teacher_logits(images: jax.Array) -> jax.Array:
    logits = apply(variables, images.reshape(-1, *images.shape[-3:]))
    return logits.reshape(*images.shape[:-3], logits.shape[-1])

  return teacher_logits


def teacher_from_config(
  config: ml_collections.ConfigDict,
  *,
  num_classes: int,
  image_shape: tuple[int, int, int],
  sharding: jax.sharding.Sharding | None = None,
) -> Callable[[jax.Array], jax.Array]:
  """`load_teacher` for the `config.distill` block: `model` (name and overrides, as `config.model`) and `checkpoint`."""
  overrides = config.model.to_dict()
  name = overrides.pop("name")
  if "dtype" in overrides:
    overrides["dtype"] = jnp.dtype(overrides["dtype"])
  return load_teacher(
    name, config.checkpoint, num_classes=num_classes, image_shape=image_shape, overrides=overrides, sharding=sharding
  )
