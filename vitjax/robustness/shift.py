"""Label shift: resampling a split to another class prior, and black-box shift estimation (BBSE, Lipton et al.
2018) of the importance weights q(y) / p(y) from a classifier's confusion matrix, to correct its predictions.

Label shift keeps p(x | y) and changes the class prior. With C[i, j] = P_source(predicted i, true j), measured on
held-out labelled source data, the target's distribution of predictions is mu = C w: solving for w needs only
predictions on the unlabelled target. Correction reweights each predicted distribution by w and renormalises.
"""

import numpy as np

from vitjax.errors import ConfigError

PRIORS = ("dirichlet", "tweak_one", "uniform")


def target_prior(name: str, num_classes: int, rng: np.random.Generator, *, alpha: float, rho: float) -> np.ndarray:
  """A class prior: drawn from Dirichlet(alpha) ("dirichlet"), `rho` on class 0 and the rest shared equally
  ("tweak_one", Lipton et al.'s second shift) or uniform."""
  if name == "dirichlet":
    return rng.dirichlet(np.full(num_classes, alpha))
  if name == "tweak_one":
    return np.r_[rho, np.full(num_classes - 1, (1.0 - rho) / (num_classes - 1))]
  if name == "uniform":
    return np.full(num_classes, 1.0 / num_classes)
  raise ConfigError(f"Unknown config.robustness.label_shift.prior={name!r}; choose one of: {', '.join(PRIORS)}.")


def resample(labels: np.ndarray, prior: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """Indices of `size` examples drawn with replacement so that classes follow `prior` (multinomial counts, then
  examples uniformly within each class); classes absent from `labels` get none."""
  present = np.bincount(labels, minlength=len(prior)) > 0
  prior = np.where(present, prior, 0.0)
  counts = rng.multinomial(size, prior / prior.sum())
  picks = [rng.choice(np.flatnonzero(labels == c), count) for c, count in enumerate(counts) if count]
  return rng.permutation(np.concatenate(picks))


def joint_confusion(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """C[i, j] = fraction of examples predicted i whose true class is j (sums to 1)."""
  joint = np.zeros((num_classes, num_classes))
  np.add.at(joint, (predictions, labels), 1.0)
  return joint / max(len(labels), 1)


def bbse_weights(confusion: np.ndarray, target_predictions: np.ndarray) -> np.ndarray:
  """Importance weights w = q(y) / p(y) solving C w = mu (least squares), mu the target's prediction frequencies;
  clipped at 0, since a negative weight is estimation noise."""
  num_classes = len(confusion)
  mu = np.bincount(target_predictions, minlength=num_classes) / max(len(target_predictions), 1)
  weights, *_ = np.linalg.lstsq(confusion, mu, rcond=None)
  return np.maximum(weights, 0.0)


def true_weights(source_labels: np.ndarray, target_labels: np.ndarray, num_classes: int) -> np.ndarray:
  """q(y) / p(y) from the class frequencies of the two label sets (0 where the source has none)."""
  p = np.bincount(source_labels, minlength=num_classes) / len(source_labels)
  q = np.bincount(target_labels, minlength=num_classes) / len(target_labels)
  return np.divide(q, p, out=np.zeros(num_classes), where=p > 0)


def reweight(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """Predicted distributions under the target prior: p(y | x) w_y, renormalised (unchanged where all weights of
  an example's support are 0)."""
  shifted = probs * weights
  total = shifted.sum(axis=1, keepdims=True)
  return np.where(total > 0, shifted / np.maximum(total, 1e-300), probs)


def evaluate_shift(
  source_probs: np.ndarray, source_labels: np.ndarray, target_probs: np.ndarray, target_labels: np.ndarray
) -> dict[str, float]:
  """One shifted target: accuracy before and after BBSE correction, and the weight estimate's squared error
  (mean over classes) against the true weights, next to that of assuming no shift (all weights 1)."""
  num_classes = source_probs.shape[1]
  confusion = joint_confusion(source_probs.argmax(1), source_labels, num_classes)
  estimated = bbse_weights(confusion, target_probs.argmax(1))
  truth = true_weights(source_labels, target_labels, num_classes)
  corrected = reweight(target_probs, estimated)
  return {
    "accuracy": float(np.mean(target_probs.argmax(1) == target_labels)),
    "corrected_accuracy": float(np.mean(corrected.argmax(1) == target_labels)),
    "oracle_accuracy": float(np.mean(reweight(target_probs, truth).argmax(1) == target_labels)),
    "weight_mse": float(np.mean((estimated - truth) ** 2)),
    "unweighted_mse": float(np.mean((1.0 - truth) ** 2)),
  }
