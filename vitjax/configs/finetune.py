"""Fine-tuning strategies of the transfer configs: which parameters train, and at which rate.

Chosen by the config argument after the dataset, e.g. ``configs/vit_b16.py:cifar10,feature_extraction``:

  full                every parameter trains (the published recipes).
  feature_extraction  the backbone is frozen, only the new head trains.
  freeze{k}           the stem and the first k blocks (ViT) or stages (ResNet) are frozen; the rest trains.
  layer_decay{d}      layer-wise learning rates: the head at the base rate, each block below it d times slower.

``runlocal`` may follow (``cifar10,freeze6,runlocal``): the same recipe as a laptop smoke run (``common.runlocal``)
on 32-pixel crops, with the smallest model of the family.

All of them keep the recipe's schedule (linear warmup, then cosine or steps). Frozen parameters get no update and
no optimizer state (``config.optimizer.freeze`` is a regex over '/'-joined parameter names).
"""

import re
from collections.abc import Mapping
from typing import Any

import ml_collections

from vitjax.configs import common
from vitjax.errors import ConfigError

STRATEGIES = ("full", "feature_extraction", "freeze{k}", "layer_decay{d}")
# What runlocal changes on top of common.runlocal: images shrunk to a 32-pixel crop.
RUNLOCAL_IMAGES = {
  "data.pp_train": "resize(40)|random_crop(32)|flip_lr|value_range(-1, 1)",
  "data.pp_eval": "resize(32)|value_range(-1, 1)",
}


def apply(config: ml_collections.ConfigDict, strategy: str, *, stem: str, block: str, first_block: int = 0) -> None:
  """Sets `config.optimizer` for `strategy`. `stem` is a regex of the stem's parameter names, `block` a format
  string giving block i's name prefix (blocks numbered from `first_block`)."""
  if strategy == "full":
    return
  if strategy == "feature_extraction":
    config.optimizer.freeze = r"^(?!head/)"
    return
  if match := re.fullmatch(r"freeze(\d+)", strategy):
    blocks = [block.format(i) for i in range(first_block, first_block + int(match[1]))]
    config.optimizer.freeze = "^(" + "|".join([stem, *map(re.escape, blocks)]) + ")"
    return
  if match := re.fullmatch(r"layer_decay(0?\.\d+|1(\.0*)?)", strategy):
    config.optimizer.layerwise_decay = float(match[1])
    return
  raise ConfigError(
    f"Unknown fine-tuning strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)} "
    f"(e.g. freeze6, layer_decay0.75), optionally followed by ,{common.RUNLOCAL}."
  )


def parse_arg(arg: str | None, presets: Mapping[str, Any], *, model: str) -> tuple[str, str, bool]:
  """(dataset, strategy, runlocal) from a config argument such as ``cifar10``, ``cifar10,freeze6`` or
  ``cifar10,freeze6,runlocal`` (default cifar10, full); a dataset without a preset fails naming the presets."""
  rest, local = common.split_runlocal(arg)
  dataset, _, strategy = (rest or "cifar10").partition(",")
  if dataset not in presets:
    raise ConfigError(
      f"Unknown preset {dataset!r} for {model}; choose one of: {', '.join(presets)} "
      f"(then optionally a strategy and {common.RUNLOCAL})."
    )
  return dataset, strategy or "full", local


def base_config(
  model: str, dataset: str, strategy: str, *, train_split: str, eval_split: str
) -> ml_collections.ConfigDict:
  """The common base config for fine-tuning ``model`` on ``dataset``, named after the run."""
  config = common.get_base_config()
  config.name = f"{model}_{dataset}" + ("" if strategy == "full" else f"_{strategy}")
  config.model.name = model
  config.data.dataset = dataset
  config.data.train_split = train_split
  config.data.eval_split = eval_split
  return config


def runlocal(config: ml_collections.ConfigDict, *, model: str) -> ml_collections.ConfigDict:
  """``common.runlocal`` for a fine-tuning config: also 32-pixel crops and ``model``, the family's smallest."""
  return common.runlocal(config, {**RUNLOCAL_IMAGES, "model.name": model})
