"""The families of timm state dicts: each family module registers itself here, with its mapping both ways and the
timm architecture names it builds.

A `Family` says whether a state dict is its layout (`matches`), maps it onto this project's variables (`convert`)
and back (`to_timm`), and names the timm architectures it stands for (`architectures`: timm name -> registered
model name) with the translation of timm's `model_args` to model options (`options`) and back (`model_args`, from
the built module and the input size).
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vitjax.errors import ConfigError
from vitjax.transfer.timm import layout

State = Mapping[str, np.ndarray]
Flat = dict[str, np.ndarray]

# timm `model_args` that change nothing a loaded model computes: its training-time regularisation.
TRAINING_ARGS = ("drop_rate", "drop_path_rate", "proj_drop_rate", "attn_drop_rate", "pos_drop_rate", "pretrained_cfg")


def no_options(name: str, model_args: Mapping[str, Any]) -> dict[str, Any]:
  """The `options` of a family whose architectures take no `model_args` besides the class count."""
  check_args(name, model_args, ())
  return {}


def no_model_args(architecture: str, model: Any, image_size: int) -> dict[str, Any]:
  """The `model_args` of a family whose architecture names say everything."""
  del architecture, model, image_size
  return {}


def check_args(architecture: str, model_args: Mapping[str, Any], known: tuple[str, ...]) -> None:
  """A one-line ValueError naming the `model_args` this project does not translate for `architecture`."""
  unknown = sorted(set(model_args) - {"num_classes", "in_chans", *TRAINING_ARGS, *known})
  if unknown:
    raise ConfigError(
      f"timm model_args {', '.join(unknown)} of {architecture!r} are not supported here "
      f"(supported: num_classes{''.join(', ' + k for k in known)})."
    )
  if model_args.get("in_chans", 3) != 3:
    raise ConfigError(f"{architecture!r} takes {model_args['in_chans']} input channels; models here take 3.")


@dataclasses.dataclass(frozen=True)
class Family:
  """One layout of timm state dicts; see the module docstring. Families are tried by ascending `priority`, so
  that a layout whose keys contain another's (ResNet's inside EfficientNet's, say) is recognised first."""

  name: str
  priority: int
  matches: Callable[[State], bool]
  convert: Callable[[State], Flat]
  to_timm: Callable[[Flat], Flat]
  architectures: Mapping[str, str] = dataclasses.field(default_factory=dict)
  options: Callable[[str, Mapping[str, Any]], dict[str, Any]] = no_options
  model_args: Callable[[str, Any, int], dict[str, Any]] = no_model_args
  # Registered model name -> timm architecture, for models that `architectures` does not list by name.
  publish_as: Callable[[str], str | None] = lambda name: None
  # (module, flat variables, input size) -> the flat variables with what the module computes but timm stores (a
  # fixed position embedding), before `to_timm`; published modules that differ only so are `equivalent` fields.
  complete: Callable[[Any, Flat, tuple[int, int]], Flat] = lambda model, flat, image_size: flat
  equivalent: tuple[tuple[str, Any, Any], ...] = ()

  def architecture_of(self, name: str) -> str | None:
    """The timm architecture that the registered model `name` is published as, if this family has one."""
    listed = [arch for arch, model in self.architectures.items() if model == name]
    return listed[0] if listed else self.publish_as(name)


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
  """Adds `family`; a name registered twice is a programming error."""
  if family.name in _FAMILIES:
    raise ValueError(f"timm family {family.name!r} is registered twice.")
  _FAMILIES[family.name] = family
  return family


def register_renamed(name: str, torch_module: Callable[[str], str | None], **fields: Any) -> Family:
  """Registers a family whose `to_timm` only renames modules: `layout.to_torch` with `torch_module` giving each
  Flax module path's torch name; `fields` are the other `Family` fields."""
  return register(Family(name, to_timm=functools.partial(layout.to_torch, module=torch_module), **fields))


def families() -> list[Family]:
  """Every registered family, in the order their `matches` are tried."""
  return sorted(_FAMILIES.values(), key=lambda family: (family.priority, family.name))


def architectures() -> dict[str, str]:
  """Every timm architecture name that loads, and the registered model it builds."""
  return {arch: model for family in families() for arch, model in family.architectures.items()}


def for_architecture(architecture: str) -> Family:
  """The family that builds timm's `architecture` (a pretrained tag after '.' is ignored)."""
  base = architecture.partition(".")[0]
  for family in families():
    if base in family.architectures:
      return family
  raise ConfigError(
    f"timm architecture {architecture!r} is not supported here; supported: {', '.join(sorted(architectures()))}."
  )


def for_model(name: str) -> tuple[Family, str]:
  """(family, timm architecture) that the registered model `name` is published as."""
  for family in families():
    architecture = family.architecture_of(name)
    if architecture:
      return family, architecture
  published = sorted(set(architectures().values()))
  raise ConfigError(f"Model {name!r} has no timm architecture to publish as; models with one: {', '.join(published)}.")
