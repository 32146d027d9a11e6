"""Per-example losses, computed in float32: classification over float targets (one-hot, smoothed, mixed or
multi-hot), and knowledge distillation against a teacher's logits (Hinton et al. 2015; DeiT, Touvron et al. 2021)."""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vitjax.errors import ConfigError

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def smooth_labels(labels: jax.Array, smoothing: float) -> jax.Array:
  """Label smoothing: moves ``smoothing`` of the target mass uniformly onto all classes."""
  return labels * (1.0 - smoothing) + smoothing / labels.shape[-1]


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against a target distribution."""
  labels = smooth_labels(labels, label_smoothing) if label_smoothing else labels
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.float32))


def sigmoid_cross_entropy(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example multi-label loss: binary cross-entropy summed over classes."""
  labels = labels * (1.0 - label_smoothing) + 0.5 * label_smoothing if label_smoothing else labels
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.float32)).sum(-1)


def focal_loss(
  logits: jax.Array, labels: jax.Array, *, alpha: float = 0.25, gamma: float = 2.0, label_smoothing: float = 0.0
) -> jax.Array:
  """Per-example sigmoid focal loss (Lin et al. 2017), summed over classes."""
  labels = labels * (1.0 - label_smoothing) + 0.5 * label_smoothing if label_smoothing else labels
  return optax.sigmoid_focal_loss(logits.astype(jnp.float32), labels.astype(jnp.float32), alpha=alpha, gamma=gamma).sum(
    -1
  )


LOSSES = {"softmax_xent": softmax_cross_entropy, "sigmoid_xent": sigmoid_cross_entropy, "focal": focal_loss}


def get(name: str):
  """The per-example loss function called ``name``."""
  if name not in LOSSES:
    raise ConfigError(f"Unknown loss {name!r}; choose one of: {', '.join(LOSSES)}.")
  return LOSSES[name]


def from_config(config: ml_collections.ConfigDict) -> LossFn:
  """`loss(logits, labels)` per example, as `config.loss` names it, with its options bound."""
  options = config.to_dict()
  return functools.partial(get(options.pop("name")), **options)


def soft_distillation(student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float) -> jax.Array:
  """Per-example KL(teacher || student) between the temperature-softened distributions, times T^2.

  The T^2 keeps the gradient's scale independent of T (Hinton et al.): it is T (softmax(s/T) - softmax(t/T)).
  """
  log_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  log_teacher = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature)
  kl = jnp.sum(jnp.exp(log_teacher) * (log_teacher - log_student), axis=-1)
  return temperature**2 * kl


def hard_distillation(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
  """Per-example cross-entropy against the teacher's top class (DeiT's hard-label distillation)."""
  targets = jax.nn.one_hot(jnp.argmax(teacher_logits, axis=-1), student_logits.shape[-1])
  return optax.softmax_cross_entropy(student_logits.astype(jnp.float32), targets)


DISTILLATION_KINDS = ("soft", "hard")


def distillation(
  student_logits: jax.Array,
  labels: jax.Array,
  teacher_logits: jax.Array,
  *,
  base_loss: LossFn,
  kind: str = "soft",
  alpha: float = 0.5,
  temperature: float = 1.0,
) -> jax.Array:
  """Per-example (1 - alpha) * base_loss(student, labels) + alpha * distillation loss of `kind`.

  DeiT's hard distillation is kind='hard', alpha=0.5; Hinton's soft targets are kind='soft' with T of 1-4.
  """
  if kind not in DISTILLATION_KINDS:
    raise ConfigError(f"Unknown distillation kind {kind!r}; choose one of: {', '.join(DISTILLATION_KINDS)}.")
  if kind == "soft":
    distill = soft_distillation(student_logits, teacher_logits, temperature=temperature)
  else:
    distill = hard_distillation(student_logits, teacher_logits)
  return (1.0 - alpha) * base_loss(student_logits, labels) + alpha * distill
