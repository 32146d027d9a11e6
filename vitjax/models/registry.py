"""Where model families register themselves: names, options with their docs, layer groups, published counts.

A family module (`vitjax/models/<family>.py`) declares one `Family` and registers each of its names with `register`;
`vitjax.models` imports every module of the package, so adding a family edits no central table. Configs take their
`config.model` keys from `options()`, layer-wise learning rates take a parameter's depth from `layer_groups`, and the
tests check every `Entry.params` count.
"""

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class Option:
  """A model option a config may set: its type (the config key's placeholder), a one-line doc and its default in
  the config (None: the model's own default)."""

  type: type
  doc: str
  default: Any = None


# Options every family takes: the classifier head's initial bias and the compute dtype.
COMMON_OPTIONS = {
  "head_bias_init": Option(float, "The classifier head's initial bias (its kernel starts at zero)."),
  "dtype": Option(str, 'Compute dtype; "bfloat16" keeps float32 parameters and optimizer state.', default="float32"),
}

STOCHASTIC_DEPTH = Option(float, "The last block's drop-path rate (linear over depth).")
# The regularisation options of families that drop out only before the head.
REGULARISATION = {"dropout_rate": Option(float, "Dropout before the head."), "stochastic_depth": STOCHASTIC_DEPTH}


@dataclasses.dataclass(frozen=True)
class LayerGroups:
  """How a parameter's '/'-joined name gives its depth: `blocks` are (regex, offset) pairs, the first whose group 1
  is found gives depth int(group 1) + offset (blocks and stages count from 1); `stem` matches depth 0; anything
  else sits on top (final norms, pre-logits, head)."""

  blocks: tuple[tuple[str, int], ...] = ()
  stem: str = r"(?!)"

  def block_depth(self, name: str) -> int | None:
    """The 1-based block or stage of parameter `name`, or None for the stem and the top."""
    for pattern, offset in self.blocks:
      if match := re.search(pattern, name):
        return int(match.group(1)) + offset
    return None

  def layer_index(self, name: str, num_layers: int) -> int:
    """0 for the stem, the block/stage (from 1) for the body and num_layers + 1 for the top."""
    depth = self.block_depth(name)
    if depth is not None:
      return depth
    return 0 if re.search(self.stem, name) else num_layers + 1


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family: its options (COMMON_OPTIONS included), its layer groups and, optionally, `parse`, which builds
  names no table lists (ViT's `vit_{variant}{patch}`): name -> (module class, arguments), or None; `parse_help`
  says which names it takes, for the error on an unknown name."""

  name: str
  options: Mapping[str, Option]
  layer_groups: LayerGroups
  parse: Callable[[str], tuple[type[nn.Module], dict[str, Any]] | None] | None = None
  parse_help: str = ""


@dataclasses.dataclass(frozen=True)
class Entry:
  """A registered name: its family, module class, constructor arguments and parameter count (`params`, None when
  unknown) at `params_at` = (image size, classes); published where the family's file says so."""

  name: str
  family: Family
  module: type[nn.Module]
  kwargs: Mapping[str, Any]
  params: int | None = None
  params_at: tuple[int, int] = (224, 1000)


_FAMILIES: dict[str, Family] = {}
_ENTRIES: dict[str, Entry] = {}


def module_options(module: type[nn.Module]) -> set[str]:
  """The keyword arguments a module class takes besides `num_classes`."""
  return {f.name for f in dataclasses.fields(module) if f.init and f.name not in ("parent", "name", "num_classes")}


def family(
  name: str,
  *,
  options: Mapping[str, Option] | None = None,
  layer_groups: LayerGroups = LayerGroups(),
  parse: Callable[[str], tuple[type[nn.Module], dict[str, Any]] | None] | None = None,
  parse_help: str = "",
) -> Family:
  """Declares family `name` (arguments as `Family`'s fields); an option declared elsewhere must keep its type."""
  if name in _FAMILIES:
    raise ValueError(f"Model family {name!r} is declared twice.")
  declared = {**COMMON_OPTIONS, **(options or {})}
  for key, option in declared.items():
    other = options_by_name().get(key)
    if other is not None and other[0].type is not option.type:
      raise ValueError(
        f"Option {key!r} of family {name!r} is a {option.type.__name__}, elsewhere a {other[0].type.__name__}."
      )
  _FAMILIES[name] = Family(name, declared, layer_groups, parse, parse_help)
  return _FAMILIES[name]


def register(
  owner: Family,
  name: str,
  module: type[nn.Module],
  kwargs: Mapping[str, Any] | None = None,
  *,
  params: int | None = None,
  params_at: tuple[int, int] = (224, 1000),
) -> Entry:
  """Registers `name` as `module(**kwargs)` of family `owner`; every option of the family must be an argument of
  `module`, so that a config's option reaches the model."""
  if name in _ENTRIES:
    raise ValueError(f"Model {name!r} is registered twice ({_ENTRIES[name].family.name} and {owner.name}).")
  missing = sorted(set(owner.options) - module_options(module))
  if missing:
    raise ValueError(f"Family {owner.name!r} declares options {module.__name__} does not take: {', '.join(missing)}")
  _ENTRIES[name] = Entry(name, owner, module, dict(kwargs or {}), params, params_at)
  return _ENTRIES[name]


def entry(name: str) -> Entry:
  """The registration of `name` (a KeyError for a name no family registered)."""
  return _ENTRIES[name]


def entries() -> list[Entry]:
  """Every registered name, in registration order."""
  return list(_ENTRIES.values())


def families() -> list[Family]:
  """Every declared family, in declaration order."""
  return list(_FAMILIES.values())


def resolve(name: str) -> tuple[Family, type[nn.Module], dict[str, Any]]:
  """The family, module class and arguments of a registered or parsable name; None's family for an unknown one."""
  if name in _ENTRIES:
    entry = _ENTRIES[name]
    return entry.family, entry.module, dict(entry.kwargs)
  for owner in _FAMILIES.values():
    parsed = owner.parse(name) if owner.parse else None
    if parsed is not None:
      return owner, *parsed
  raise KeyError(name)


def options_by_name() -> dict[str, list[Option]]:
  """Every declared option with each declaration of it (families may share an option, with their own doc)."""
  found: dict[str, list[Option]] = {}
  for owner in _FAMILIES.values():
    for key, option in owner.options.items():
      found.setdefault(key, []).append(option)
  return found


def option_docs() -> dict[str, str]:
  """One line per option: each distinct doc, after the families that declare it that way."""
  docs: dict[str, dict[str, list[str]]] = {}
  for owner in _FAMILIES.values():
    for key, option in owner.options.items():
      docs.setdefault(key, {}).setdefault(option.doc, []).append(owner.name)
  return {
    key: "; ".join(
      doc.rstrip(".") if key in COMMON_OPTIONS else f"{', '.join(names)}: {doc.rstrip('.')}"
      for doc, names in by_doc.items()
    )
    + "."
    for key, by_doc in docs.items()
  }
