"""Models by plain name: configs and notebooks ask for `"vit_b16"` and get a configured Flax module.

`build("vit_b16", num_classes=10, dropout_rate=0.1)` returns an unbound module whose `__call__(images, *, train)`
gives float32 logits. Every module of this package is imported here, so that each family file registers its names,
options and layer groups itself (module `registry`); no table here lists a family.
"""

import importlib
import pkgutil
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from vitjax.errors import ConfigError
from vitjax.models import registry
from vitjax.models.analysis import forward_gflops, parameter_overview
from vitjax.models.flexi import resize_patch_embedding
from vitjax.models.registry import LayerGroups, Option

__all__ = [
  "build",
  "from_config",
  "init_variables",
  "names",
  "options",
  "option_docs",
  "layer_groups",
  "forward_gflops",
  "parameter_overview",
  "resize_patch_embedding",
  "LayerGroups",
  "Option",
]

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")


def names() -> list[str]:
  """Registered names (a family's parser may build more, e.g. any `vit_{variant}{patch}`)."""
  return [entry.name for entry in registry.entries()]


def options() -> dict[str, Option]:
  """Every option a family declares, by config key (`config.model.<key>`), with its type and config default."""
  return {key: declared[0] for key, declared in registry.options_by_name().items()}


def option_docs() -> dict[str, str]:
  """A one-line doc for every `config.model` key: `name` and each option, as the declaring families word it."""
  parsed = "".join(f", or {f.parse_help}" for f in registry.families() if f.parse_help)
  return {"name": f"The model: a registered name (vitjax.models.names()){parsed}.", **registry.option_docs()}


def layer_groups(name: str) -> LayerGroups:
  """How parameter names of model `name` map to depths (stem, blocks, top) for layer-wise rates and freezing."""
  return _resolve(name)[0].layer_groups


def build(name: str, *, num_classes: int | None, **overrides: Any) -> nn.Module:
  """Returns the module registered as `name`; `overrides` replace its keyword arguments.

  `num_classes` 0 or None gives a model without head that returns pre-logits features.
  Raises ConfigError for an unknown name or an override the module does not take.
  """
  _, cls, kwargs = _resolve(name)
  valid = sorted(registry.module_options(cls))
  unknown = sorted(set(overrides) - set(valid))
  if unknown:
    raise ConfigError(
      f"Unknown override(s) {', '.join(map(repr, unknown))} for model {name!r}; valid: {', '.join(valid)}"
    )
  return cls(num_classes=num_classes, **{**kwargs, **overrides})


def from_config(config: ml_collections.ConfigDict, *, num_classes: int | None) -> nn.Module:
  """The model of `config.model`: its `name`, and every option that is set (not None) and that this model takes.

  Options of other families (a ViT's `classifier` on a ResNet) are skipped with a warning, so switching the model
  of a config needs no other change; `dtype` is the compute dtype by name (parameters stay float32).
  """
  values = {k: v for k, v in config.to_dict().items() if k != "name" and v is not None}
  _, cls, _ = _resolve(config.name)
  accepted = registry.module_options(cls)
  skipped = sorted(set(values) - accepted)
  if skipped:
    logging.warning("Model %s takes no %s: ignored.", config.name, ", ".join(skipped))
  kwargs = {k: v for k, v in values.items() if k in accepted}
  if "dtype" in kwargs:
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  return build(config.name, num_classes=num_classes, **kwargs)


def init_variables(model: nn.Module, rng: jax.Array, *, image_shape: tuple[int, ...]) -> dict[str, Any]:
  """The model's variables for one float32 input batch of `image_shape`: (height, width, channels), or for NaFlex
  (sequence length, packed patch width)."""
  return model.init({"params": rng, "dropout": rng}, jnp.zeros((1, *image_shape), jnp.float32), train=False)


def _resolve(name: str) -> tuple[registry.Family, type[nn.Module], dict[str, Any]]:
  """Family, module class and architecture arguments of a registered or parsable name; one line if unknown."""
  try:
    return registry.resolve(name)
  except KeyError:
    parsed = "".join(f" or {f.parse_help}" for f in registry.families() if f.parse_help)
    raise ConfigError(f"Unknown model {name!r}; choose one of: {', '.join(names())}{parsed}.") from None
