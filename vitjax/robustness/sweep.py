"""One pass over the eval split for `--mode=robustness`: per real example, the clean logits, whether each attack at
each radius and each corruption at each severity leaves the prediction right, and MC-dropout summaries.

The model functions are jitted once each over the mesh (batch-sharded inputs, replicated outputs, so every
process sees every example); corruptions run on each process's own pixels on the host. What is kept per example
is small (logits, flags, MC-dropout summaries), so a large split streams through.
"""

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vitjax import losses, sharding
from vitjax.robustness import attacks, corruptions, uncertainty


@dataclasses.dataclass(frozen=True)
class Functions:
  """The jitted model functions of one sweep, all over eval-mode variables."""

  gather: Callable  # (variables, batch) -> (logits, labels, mask)
  logits: Callable  # (variables, images) -> logits
  attacks: dict[str, Callable]  # name -> (variables, images, labels, rng, epsilon) -> correct
  mc_probs: Callable  # (variables, images, rng) -> (passes, N, C) probabilities


def _attack_correct(model, name: str, options: ml_collections.ConfigDict, affine) -> Callable:
  """`correct(variables, images, one-hot labels, rng, epsilon)`: is the top class right after attack `name`."""

  def correct(variables, images, labels, rng, epsilon):
    def loss(inputs):
      return losses.softmax_cross_entropy(model.apply(variables, inputs, train=False), labels)

    adversarial = attacks.attack(
      name,
      attacks.in_pixels(loss, *affine),
      attacks.to_pixels(images, *affine),
      rng,
      epsilon=epsilon,
      relative_step_size=options.relative_step_size,
      steps=options.steps,
      random_start=options.random_start,
    )
    logits = model.apply(variables, attacks.from_pixels(adversarial, *affine), train=False)
    return jnp.argmax(logits, -1) == jnp.argmax(labels, -1)

  return correct


def make_functions(model, mc_model, options: ml_collections.ConfigDict, affine, mesh) -> Functions:
  """The sweep's functions for `model` (eval mode), `mc_model` (its dropout twin) and pixel `affine`."""
  out = sharding.replicated(mesh)
  logits_fn = lambda variables, images: model.apply(variables, images, train=False).astype(jnp.float32)  # noqa: E731
  gather = lambda variables, batch: (logits_fn(variables, batch["image"]), batch["labels"], batch["mask"])  # noqa: E731
  return Functions(
    gather=jax.jit(gather, out_shardings=out),
    logits=jax.jit(logits_fn, out_shardings=out),
    attacks={
      name: jax.jit(_attack_correct(model, name, options, affine), out_shardings=out) for name in options.attacks
    },
    mc_probs=jax.jit(uncertainty.mc_dropout_probs(mc_model, passes=options.mc_dropout.passes), out_shardings=out),
  )


def radii(options: ml_collections.ConfigDict, name: str) -> tuple[float, ...]:
  """The attack radii of `name` in pixel units: L2 radii for pgd_l2, L-inf ones otherwise."""
  return tuple(options.l2_epsilons if name == "pgd_l2" else options.epsilons)


def _to_uint8_pixels(images: np.ndarray, affine) -> np.ndarray:
  return np.clip(np.round((images - affine[1]) / affine[0]), 0, 255).astype(np.uint8)


def _batch_outcomes(fns: Functions, variables, batch, place, options, affine, *, rng, seed) -> dict[str, Any]:
  """Every outcome of one batch: clean logits and labels, attack and corruption correctness, the MC-dropout
  mean probabilities, entropy and mutual information."""
  placed = place(batch)
  logits, labels, mask = fns.gather(variables, placed)
  out = {"logits": logits, "labels": labels, "mask": mask}
  summary = uncertainty.mc_summary(np.asarray(fns.mc_probs(variables, placed["image"], rng)))
  out.update({f"mc_dropout/{key}": value for key, value in summary.items()})
  for a, name in enumerate(options.attacks):
    for e, epsilon in enumerate(radii(options, name)):
      key = jax.random.fold_in(rng, 1000 * (a + 1) + e)
      out[f"{name}/{epsilon:g}"] = fns.attacks[name](variables, placed["image"], placed["labels"], key, epsilon)
  pixels = _to_uint8_pixels(batch["image"], affine)
  for k, kind in enumerate(options.corruptions):
    for severity in corruptions.SEVERITIES:
      corrupted = corruptions.corrupt(pixels, kind, severity, seed=seed + k)
      images = (corrupted * affine[0] + affine[1]).astype(np.float32)
      corrupted_logits = fns.logits(variables, place({**batch, "image": images})["image"])
      out[f"{kind}/{severity}"] = jnp.argmax(corrupted_logits, -1) == jnp.argmax(labels, -1)
  return out


def sweep(
  fns: Functions,
  variables: Any,
  batches: Iterable[dict[str, np.ndarray]],
  mesh: jax.sharding.Mesh,
  options: ml_collections.ConfigDict,
  affine,
  *,
  seed: int,
) -> dict[str, np.ndarray]:
  """Outcomes of every real example of `batches`, concatenated (at most `options.max_batches` batches if > 0):
  `logits`, integer `labels`, `mc_dropout/{probs,entropy,mutual_information}`, and per "attack/epsilon" and
  "corruption/severity" whether the prediction stays right."""
  batch_sharding = sharding.batch_sharding(mesh)
  place = lambda batch: sharding.to_global({k: batch[k] for k in ("image", "labels", "mask")}, batch_sharding)  # noqa: E731
  rng = jax.random.key(seed)
  collected: dict[str, list[np.ndarray]] = {}
  for index, batch in enumerate(batches):
    if options.max_batches and index >= options.max_batches:
      break
    batch_seed = seed + 7919 * index  # Corruption noise differs between batches, and is the same on every rerun.
    outcomes = _batch_outcomes(
      fns, variables, batch, place, options, affine, rng=jax.random.fold_in(rng, index), seed=batch_seed
    )
    keep = np.asarray(outcomes.pop("mask")) > 0
    for key, value in outcomes.items():
      collected.setdefault(key, []).append(np.asarray(value)[keep])
  result = {key: np.concatenate(values) for key, values in collected.items()}
  result["labels"] = result["labels"].argmax(axis=1)
  return result
