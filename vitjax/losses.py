"""Classification losses over float targets (one-hot, smoothed, mixed or multi-hot), computed in float32."""

import jax
import jax.numpy as jnp
import optax


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
    raise ValueError(f"Unknown loss {name!r}; choose one of: {', '.join(LOSSES)}.")
  return LOSSES[name]
