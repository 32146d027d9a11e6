"""Uncertainty: MC dropout (Gal & Ghahramani 2016) with its predictive entropy and mutual information, how well
they flag errors, and temperature scaling (Guo et al. 2017).

MC dropout runs the model with dropout on (`train=True` and a dropout rng per pass) but every BatchNorm on its
running averages: a method interceptor swaps each BatchNorm call for its eval-mode twin, so no batch statistic
leaks in and no model needs a flag for it.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from vitjax.evaluate import metrics
from vitjax.models.layers import BatchNorm

_BATCH_NORMS = (BatchNorm, nn.BatchNorm)


def _running_average_batch_norm(next_fun, args, kwargs, context):
  """Interceptor: a BatchNorm called in training mode runs as its eval-mode clone on the same variables."""
  module = context.module
  if not isinstance(module, _BATCH_NORMS) or context.method_name != "__call__" or module.use_running_average:
    return next_fun(*args, **kwargs)
  frozen = module.clone(parent=None, use_running_average=True)
  kwargs = {k: v for k, v in kwargs.items() if k != "use_running_average"}
  variables = {"params": module.variables["params"], "batch_stats": module.variables["batch_stats"]}
  return frozen.apply(variables, *args, **kwargs)


def mc_dropout_probs(model: nn.Module, *, passes: int) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
  """`probs(variables, images, rng) -> (passes, N, num_classes)`: softmax outputs of `passes` dropout masks,
  BatchNorm in eval mode (pure, for jit)."""

  def one_pass(variables: Any, images: jax.Array, rng: jax.Array) -> jax.Array:
    with nn.intercept_methods(_running_average_batch_norm):
      logits = model.apply(variables, images, train=True, rngs={"dropout": rng})
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  def probs(variables: Any, images: jax.Array, rng: jax.Array) -> jax.Array:
    return jax.lax.map(lambda key: one_pass(variables, images, key), jax.random.split(rng, passes))

  return probs


def entropy(probs: np.ndarray) -> np.ndarray:
  """Shannon entropy (nats) over the last axis."""
  return -np.sum(probs * np.log(np.clip(probs, 1e-12, 1.0)), axis=-1)


def mc_summary(pass_probs: np.ndarray) -> dict[str, np.ndarray]:
  """Per example, from (passes, N, C) probabilities: the mean prediction, its predictive entropy H[E p], and the
  mutual information between prediction and weights, H[E p] - E H[p] (the epistemic part; >= 0)."""
  pass_probs = pass_probs.astype(np.float64)
  mean = pass_probs.mean(axis=0)
  predictive = entropy(mean)
  # Jensen makes it >= 0; identical passes leave only rounding, which is clipped.
  information = np.maximum(predictive - entropy(pass_probs).mean(axis=0), 0.0)
  return {"probs": mean, "entropy": predictive, "mutual_information": information}


def error_detection_auroc(uncertainty: np.ndarray, errors: np.ndarray) -> float:
  """ROC AUC of `uncertainty` as a score for "this prediction is wrong" (NaN without both kinds)."""
  if errors.all() or not errors.any():
    return float("nan")
  return metrics.roc_auc(uncertainty, errors)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
  """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
  scaled = logits.astype(np.float64) / temperature
  shifted = scaled - scaled.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
  """The temperature minimising NLL on (logits, labels), searched over log T in [-5, 5]; T = 1 when nothing
  beats it, so the fitted NLL never exceeds the unscaled one."""
  result = optimize.minimize_scalar(
    lambda log_t: nll(logits, labels, float(np.exp(log_t))), bounds=(-5.0, 5.0), method="bounded"
  )
  fitted = float(np.exp(result.x))
  return fitted if nll(logits, labels, fitted) < nll(logits, labels) else 1.0
