"""Evaluators by type, listed by name in `config.evals`: `{"val": {"type": "classification", ...}, "knn": ...}`.

Each type lives in its own module of this package and registers itself with `register`, declaring its options
(default and one-line doc); `config(type)` gives an entry with every option, so that a config file lists it and
``--config.evals.knn.k=10`` overrides it. The same evaluator objects score a training run's state at their `every`
steps (vitjax/train/loop.py) and a trained run in ``--mode=eval`` (report.py): both hand them a `Weights`.
"""

from __future__ import annotations

import dataclasses
import importlib
import numbers
import os
import pkgutil
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder

from vitjax import data, sharding
from vitjax.errors import ConfigError

SOURCES = ("source", "target")  # config.data, or its second source config.data.target with the target_* keys.


@dataclasses.dataclass(frozen=True)
class Option:
  """One option of an evaluator type: its default and what it does; `kind` types a None default (overrides from
  the command line need a type)."""

  default: Any
  doc: str
  kind: type | None = None


# Options every type takes beside its own.
COMMON = {
  "every": Option(None, "steps between runs during training (None: config.eval_every; 0: at the end only)", int),
  "prefix": Option("", "put before each metric name, e.g. target_ (eval/target_accuracy)"),
}


@dataclasses.dataclass(frozen=True)
class Setting:
  """What evaluators are built from: the run's config, model and data, the loss, and where arrays go. `tta` and
  `crop_size` are the test-time views of ``--mode=eval`` (config.eval); training evaluates the plain image."""

  config: ml_collections.ConfigDict
  model: nn.Module
  source: data.Source
  target: data.Source | None
  loss_fn: Callable
  mesh: jax.sharding.Mesh
  class_names: Sequence[str]
  tta: str = "none"
  crop_size: int = 0

  def splits(self, which: str) -> tuple[str, str]:
    """(train split, eval split) of `which` of SOURCES."""
    if which == "target":
      if self.target is None:
        raise ConfigError("dataset='target' needs config.data.target (the second source); set it or drop this entry.")
      return self.config.data.target_split, self.config.data.target_eval_split
    return self.config.data.train_split, self.config.data.eval_split

  def dataset(self, which: str, split: str, *, seq_len: int | None = None):
    """This process's share of `split` of `which` with eval preprocessing, once and in order, padded and masked;
    NaFlex inputs at `seq_len` patches (None: the longest of config.data.seq_lens)."""
    if not split:
      raise ConfigError(f"No split to evaluate on the {which} dataset: set this entry's split.")
    source, view = (self.target, data.target_config(self.config.data)) if which == "target" else (self.source, None)
    return data.eval_dataset(
      source,
      data.at_seq_len(view or self.config.data, seq_len),
      split=split,
      batch_size=self.config.eval_batch_size // jax.process_count(),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )

  def place_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return sharding.to_global(batch, sharding.batch_sharding(self.mesh))


@dataclasses.dataclass
class Weights:
  """What evaluators score: model variables, several for an ensemble (logits averaged), and in training the
  moving average of the parameters when kept (`ema`, scored as `ema_*` by the classification evaluator)."""

  members: tuple[Any, ...]
  ema: Any = None
  cache: dict[Any, Any] = dataclasses.field(default_factory=dict, repr=False)  # Shared by one evaluation's evaluators.

  def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
    """`compute()`, once per key for these weights (the features of a split that two evaluators both read)."""
    if key not in self.cache:
      self.cache[key] = compute()
    return self.cache[key]


class Evaluator:
  """Scores `Weights`: metrics by name (numbers are logged and kept in results; arrays only reach reports)."""

  def __call__(self, weights: Weights) -> dict[str, Any]:
    raise NotImplementedError

  def write_report(self, results: dict[str, Any], workdir: str, *, prefix: str, class_names: Sequence[str]) -> None:
    """``--mode=eval``: files beside the metrics, from `results` (a header plus this evaluator's own metrics);
    `prefix` is the entry's, for file names."""


Factory = Callable[[ml_collections.ConfigDict, Setting], Evaluator]


@dataclasses.dataclass(frozen=True)
class EvaluatorType:
  name: str
  options: dict[str, Option]
  factory: Factory


_TYPES: dict[str, EvaluatorType] = {}


def register(name: str, *, options: dict[str, Option]) -> Callable[[Factory], Factory]:
  """Registers `factory(options, setting) -> Evaluator` as type `name` taking `options` (plus COMMON's)."""

  def decorator(factory: Factory) -> Factory:
    _TYPES[name] = EvaluatorType(name, {**COMMON, **options}, factory)
    return factory

  return decorator


def types() -> dict[str, EvaluatorType]:
  """Every registered type: this package's modules register theirs when imported, so all are imported first."""
  for module in pkgutil.iter_modules([os.path.dirname(__file__)]):
    importlib.import_module(f"{__package__}.{module.name}")
  return dict(_TYPES)


def _type(name: str, type_name: Any) -> EvaluatorType:
  known = types()
  if type_name not in known:
    raise ConfigError(f"Unknown config.evals.{name}.type={type_name!r}; choose one of: {', '.join(sorted(known))}.")
  return known[type_name]


def config(type_name: str, **options: Any) -> ml_collections.ConfigDict:
  """A `config.evals` entry of `type_name`: every option at its default, `options` applied."""
  kind = _type("<name>", type_name)
  entry = {"type": type_name}
  for key, option in kind.options.items():
    entry[key] = placeholder(option.kind) if option.default is None else option.default
  entry = ml_collections.ConfigDict(entry)
  _check_keys("<name>", kind, options)
  entry.update(options)
  return entry


def _check_keys(name: str, kind: EvaluatorType, keys) -> None:
  unknown = sorted(set(keys) - set(kind.options) - {"type"})
  if unknown:
    raise ConfigError(
      f"Unknown option config.evals.{name}.{unknown[0]} of type {kind.name!r}; it takes: {', '.join(kind.options)}."
    )


def check(config: ml_collections.ConfigDict) -> None:
  """Fails on an unknown type or option, a negative interval, or metric names two entries would both write; and
  without the unprefixed classification entry whose accuracy the run reports."""
  seen = {}
  for name, entry in config.evals.items():
    if not isinstance(entry, (ml_collections.ConfigDict, dict)) or "type" not in entry:
      raise ConfigError(f"config.evals.{name} must be a dict with a type, e.g. registry.config('classification').")
    kind = _type(name, entry["type"])
    _check_keys(name, kind, entry.keys())
    if (entry.get("every") or 0) < 0:
      raise ConfigError(f"config.evals.{name}.every={entry['every']} must be >= 0 (0: at the end only).")
    key = (kind.name, entry.get("prefix", ""))
    if key in seen:
      raise ConfigError(f"config.evals.{seen[key]} and .{name} would write the same metrics: give one a prefix.")
    seen[key] = name
  if ("classification", "") not in seen:
    raise ConfigError("config.evals needs a classification entry without prefix: the run's accuracy and loss.")


@dataclasses.dataclass(frozen=True)
class Scheduled:
  """A built evaluator with its entry's name, type, interval in steps and metric prefix."""

  name: str
  type: str
  every: int
  prefix: str
  evaluator: Evaluator

  def due(self, step: int, *, is_last: bool) -> bool:
    return is_last or (self.every > 0 and step % self.every == 0)


def from_config(config: ml_collections.ConfigDict, setting: Setting) -> list[Scheduled]:
  """Every entry of `config.evals`, checked and built (its data read to the first batch), in name order."""
  check(config)
  built = []
  for name, entry in config.evals.items():
    kind = types()[entry.type]
    options = ml_collections.ConfigDict({key: entry.get(key, option.default) for key, option in kind.options.items()})
    try:
      evaluator = kind.factory(options, setting)
    except ConfigError as e:
      raise ConfigError(f"config.evals.{name}: {e}") from None
    built.append(Scheduled(name, entry.type, _every(config, options), options.prefix, evaluator))
  return built


def _every(config: ml_collections.ConfigDict, entry: ml_collections.ConfigDict) -> int:
  return config.eval_every if entry.get("every") is None else entry.every


def intervals(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The steps between runs of each entry of `config.evals`."""
  return tuple(_every(config, entry) for entry in config.evals.values())


def scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
  """The numbers among `metrics` (what is logged and kept in results.json), names prefixed."""
  return {
    prefix + k: v.item() if isinstance(v, np.generic) else v
    for k, v in metrics.items()
    if isinstance(v, numbers.Number) and not isinstance(v, bool)
  }


def run(evals: Sequence[Scheduled], weights: Weights) -> Iterator[tuple[Scheduled, dict[str, Any]]]:
  """(entry, its metrics) for every entry of `evals`, one after the other on the same `weights`."""
  for scheduled in evals:
    yield scheduled, scheduled.evaluator(weights)


def evaluate(evals: Sequence[Scheduled], weights: Weights) -> dict[str, float]:
  """One eval record: the numbers of every entry of `evals` on `weights`, names prefixed."""
  record = {}
  for scheduled, metrics in run(evals, weights):
    record.update(scalars(metrics, scheduled.prefix))
  return record
