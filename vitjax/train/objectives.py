"""Training objectives: what the train step minimises, as plug-ins chosen by `config.objective`.

An objective maps `(forward, params, batch, rng)` to `(loss, metrics, batch_stats)`: the scalar loss to
differentiate with respect to `params`, scalar metrics to log beside it, and the BatchNorm statistics after its
forward passes. `forward` is the model in training mode. A new objective (adversarial training, domain-adversarial,
rotation prediction) is a factory registered here with `register`; the loop and the steps need no edit. An
objective with heads of its own (`HeadObjective`) also gets their parameters, which train beside the model's.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections

from vitjax import losses, models, transfer
from vitjax.errors import ConfigError
from vitjax.train.state import variables

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Forward:
  """The model in training mode: `forward(params, images, rng) -> (logits, batch_stats)`.

  BatchNorm statistics are threaded explicitly (models without them carry an empty dict); `rng` drives dropout
  and stochastic depth. `features=True` also returns the pre-logits the model sows, for objectives with heads of
  their own.
  """

  apply_fn: Callable
  batch_stats: Any

  def __call__(self, params: Any, images: jax.Array, rng: jax.Array, *, features: bool = False):
    mutable = (["batch_stats"] if self.batch_stats else []) + (["intermediates"] if features else [])
    out = self.apply_fn(
      variables(params, self.batch_stats), images, train=True, rngs={"dropout": rng}, mutable=mutable or False
    )
    logits, updates = out if mutable else (out, {})
    batch_stats = updates.get("batch_stats", self.batch_stats)
    if features:
      return logits, updates["intermediates"]["pre_logits"][0], batch_stats
    return logits, batch_stats


class Objective(Protocol):
  def __call__(
    self, forward: Forward, params: Any, batch: Batch, rng: jax.Array
  ) -> tuple[jax.Array, dict[str, jax.Array], Any]: ...


@dataclasses.dataclass(frozen=True)
class HeadObjective:
  """An objective with parameters of its own (a domain classifier, a projection head, a decoder).

  `init(rng)` gives the heads' parameters, which the train state keeps as `objective_params` beside (never inside)
  the model's. `loss(forward, params, heads, batch, rng, step)` is the objective proper, with the heads and the
  step (for schedules over training progress) as extra arguments.
  """

  init: Callable[[jax.Array], Any]
  loss: Callable[..., tuple[jax.Array, dict[str, jax.Array], Any]]


def heads_init(objective: Objective | HeadObjective) -> Callable[[jax.Array], Any] | None:
  """The initialiser of the objective's heads; None for an objective without heads."""
  return objective.init if isinstance(objective, HeadObjective) else None


def evaluate(
  objective: Objective | HeadObjective,
  forward: Forward,
  params: Any,
  heads: Any,
  batch: Batch,
  rng: jax.Array,
  step: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array], Any]:
  """(loss, metrics, batch_stats) of any objective: heads and step go to the objectives that have heads."""
  if isinstance(objective, HeadObjective):
    return objective.loss(forward, params, heads, batch, rng, step)
  return objective(forward, params, batch, rng)


@dataclasses.dataclass(frozen=True)
class Setting:
  """What an objective's factory may use besides the config: the run's loss and the shape of its problem."""

  loss_fn: losses.LossFn
  num_classes: int
  image_shape: tuple[int, int, int]
  replicated: jax.sharding.Sharding | None = None
  num_steps: int = 0  # The run's length, for objectives scheduled over training progress.


Factory = Callable[[ml_collections.ConfigDict, Setting], Objective | HeadObjective]
_FACTORIES: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
  """Registers `factory(config, setting) -> objective` as `config.objective=name`."""

  def decorator(factory: Factory) -> Factory:
    _FACTORIES[name] = factory
    return factory

  return decorator


def names() -> list[str]:
  return sorted(_FACTORIES)


def from_config(config: ml_collections.ConfigDict, setting: Setting) -> Objective | HeadObjective:
  """The objective `config.objective` names, built (and its options checked) by its factory."""
  if config.objective not in _FACTORIES:
    raise ConfigError(f"Unknown config.objective={config.objective!r}; choose one of: {', '.join(names())}.")
  if config.distill.checkpoint and config.objective != "distill":
    raise ConfigError("config.distill.checkpoint is set: train with config.objective='distill', or unset it.")
  return _FACTORIES[config.objective](config, setting)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of examples whose top logit is the top target (hard, smoothed, mixed or multi-hot labels)."""
  return jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(labels, -1))


def feature_dim(model_config: ml_collections.ConfigDict, setting: Setting) -> int:
  """Width of the pre-logits features the model of `model_config` sows: the input of an objective's heads.

  Computed with `jax.eval_shape`, so nothing is allocated.
  """
  model = models.from_config(model_config, num_classes=setting.num_classes)

  def pre_logits(rng: jax.Array) -> jax.Array:
    model_variables = models.init_variables(model, rng, image_shape=setting.image_shape)
    images = jnp.zeros((1, *setting.image_shape), jnp.float32)
    _, state = model.apply(model_variables, images, train=False, mutable=["intermediates"])
    return state["intermediates"]["pre_logits"][0]

  return jax.eval_shape(pre_logits, jax.random.key(0)).shape[-1]


def supervised(loss_fn: losses.LossFn) -> Objective:
  """The mean of `loss_fn(logits, labels)` over the batch."""

  def objective(forward: Forward, params: Any, batch: Batch, rng: jax.Array):
    logits, batch_stats = forward(params, batch["image"], rng)
    loss = loss_fn(logits, batch["labels"]).mean()
    return loss, {"accuracy": accuracy(logits, batch["labels"])}, batch_stats

  return objective


def distillation(loss_fn: Callable, teacher_fn: Callable[[jax.Array], jax.Array]) -> Objective:
  """The mean of `loss_fn(logits, labels, teacher_logits, distill_logits)`, the teacher seeing the very images
  (augmentations, Mixup) the student sees. `distill_logits` are those of a distillation head, which a model that
  has one (DeiT) sows as `intermediates/distill_logits` in training mode; None for other models."""

  def objective(forward: Forward, params: Any, batch: Batch, rng: jax.Array):
    logits, distill_logits, batch_stats = _student_logits(forward, params, batch["image"], rng)
    loss = loss_fn(logits, batch["labels"], teacher_fn(batch["image"]), distill_logits).mean()
    # The prediction the model makes in eval mode: with two heads, their mean.
    predicted = logits if distill_logits is None else (logits + distill_logits) / 2
    return loss, {"accuracy": accuracy(predicted, batch["labels"])}, batch_stats

  return objective


def _student_logits(forward: Forward, params: Any, images: jax.Array, rng: jax.Array):
  """(logits, the distillation head's logits or None, batch_stats) of the model in training mode."""
  mutable = (["batch_stats"] if forward.batch_stats else []) + ["intermediates"]
  logits, updates = forward.apply_fn(
    variables(params, forward.batch_stats), images, train=True, rngs={"dropout": rng}, mutable=mutable
  )
  sown = updates.get("intermediates", {})
  if "distill_logits" in sown:  # Two heads (DeiT): the class head alone learns from the labels.
    logits = sown["class_logits"][0]
  distill_logits = sown["distill_logits"][0] if "distill_logits" in sown else None
  return logits, distill_logits, updates.get("batch_stats", forward.batch_stats)


@register("supervised")
def _supervised(config: ml_collections.ConfigDict, setting: Setting) -> Objective:
  del config
  return supervised(setting.loss_fn)


@register("distill")
def _distill(config: ml_collections.ConfigDict, setting: Setting) -> Objective:
  if config.parallelism != "jit":
    raise ConfigError("config.objective='distill' needs config.parallelism='jit'.")
  return distillation(distillation_loss(config.distill, setting.loss_fn), teacher_from_config(config.distill, setting))


def distillation_loss(config: ml_collections.ConfigDict, base_loss: losses.LossFn) -> Callable:
  """`loss(student_logits, labels, teacher_logits, distill_logits=None)` per example, bound to `config.distill` and
  the run's loss. With a distillation head's `distill_logits` (DeiT), the labels train the class head and the
  teacher that head: (1 - alpha) * base_loss(student, labels) + alpha * distillation(distill, teacher), DeiT's
  recipe being kind='hard', alpha=0.5."""
  if config.kind not in losses.DISTILLATION_KINDS:
    kinds = ", ".join(losses.DISTILLATION_KINDS)
    raise ConfigError(f"Unknown config.distill.kind={config.kind!r}; choose one of: {kinds}.")
  options = dict(base_loss=base_loss, kind=config.kind, temperature=config.temperature)

  def loss_fn(
    student_logits: jax.Array, labels: jax.Array, teacher_logits: jax.Array, distill_logits: jax.Array | None = None
  ) -> jax.Array:
    if distill_logits is None:
      return losses.distillation(student_logits, labels, teacher_logits, alpha=config.alpha, **options)
    # alpha=1 leaves the distillation term alone.
    distill = losses.distillation(distill_logits, labels, teacher_logits, alpha=1.0, **options)
    return (1.0 - config.alpha) * base_loss(student_logits, labels) + config.alpha * distill

  return loss_fn


def load_teacher(
  model_config: ml_collections.ConfigDict,
  checkpoint: str,
  *,
  num_classes: int,
  image_shape: tuple[int, int, int],
  sharding: jax.sharding.Sharding | None = None,
) -> Callable[[jax.Array], jax.Array]:
  """`teacher_logits(images)`: the model of `model_config` with every variable from `checkpoint`, in eval mode.

  `checkpoint` is anything `transfer.load_variables` reads (a public `.npz` with its head, or a run of this
  project), or several runs of one model separated by commas: an ensemble, whose members' logits are averaged as
  `--mode=eval` averages them. `sharding` (e.g. replicated over the mesh) places the teacher's variables once;
  images may carry extra leading axes, which the logits keep.
  """
  model = models.from_config(model_config, num_classes=num_classes)
  abstract = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), image_shape=image_shape))
  members = [transfer.load_variables(path, abstract)[0] for path in teacher_checkpoints(checkpoint)]
  stacked = jax.device_put(jax.tree.map(lambda *leaves: jnp.stack(leaves), *members), sharding)
  member_logits = jax.vmap(lambda v, images: model.apply(v, images, train=False), in_axes=(0, None))
  apply = jax.jit(lambda v, images: member_logits(v, images).mean(axis=0))

  def teacher_logits(images: jax.Array) -> jax.Array:
    logits = apply(stacked, images.reshape(-1, *images.shape[-3:]))
    return logits.reshape(*images.shape[:-3], logits.shape[-1])

  return teacher_logits


def teacher_checkpoints(checkpoint: str) -> list[str]:
  """The runs or files `config.distill.checkpoint` names: one, or an ensemble's members separated by commas."""
  return [path.strip() for path in checkpoint.split(",") if path.strip()]


def teacher_from_config(config: ml_collections.ConfigDict, setting: Setting) -> Callable[[jax.Array], jax.Array]:
  """`load_teacher` for the `config.distill` block: `model` (as `config.model`) and `checkpoint`."""
  if not config.checkpoint or not config.model.name:
    raise ConfigError("config.objective='distill' needs config.distill.checkpoint and config.distill.model.name.")
  return load_teacher(
    config.model,
    config.checkpoint,
    num_classes=setting.num_classes,
    image_shape=setting.image_shape,
    sharding=setting.replicated,
  )
