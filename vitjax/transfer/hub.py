"""Pretrained models by name from the Hugging Face Hub: `hf-hub:ORG/NAME[@REVISION]`, a repo in timm's format.

Files come through `huggingface_hub.hf_hub_download`, so its cache (`HF_HOME`, `HF_HUB_CACHE`), offline mode
(`HF_HUB_OFFLINE=1`), revisions and tokens apply as everywhere else. Only `model.safetensors` is read: a pickled
`pytorch_model.bin` can run code when loaded. The repo's `config.json` decides the model: its `architecture`
picks the timm family (`transfer.timm`) and the registered model, `model_args` the options and the class count,
`pretrained_cfg` the eval preprocessing, and `label_names` (else the ImageNet-1k names for 1000 classes) the
class names.
"""

import dataclasses
import importlib.resources
import json
import math
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from absl import logging

from vitjax import models
from vitjax.errors import ConfigError
from vitjax.transfer import timm

PREFIX = "hf-hub:"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PICKLE_FILE = "pytorch_model.bin"
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# timm's defaults for a pretrained_cfg that leaves them out: ImageNet statistics, 224 pixels, crop 0.875.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class HubModel:
  """What a Hub repo's `config.json` says: the model to build, its classes and its eval preprocessing."""

  name: str
  architecture: str
  model: ml_collections.ConfigDict
  class_names: list[str]
  image_size: tuple[int, int]
  pp_eval: str
  normalization: str

  @property
  def pp_train(self) -> str:
    """timm's default training transform at the model's size: a random-resized crop, flips, its normalisation."""
    return f"inception_crop({self.image_size})|flip_lr|{self.normalization}"


def is_hub_name(path: Any) -> bool:
  return isinstance(path, str) and path.startswith(PREFIX)


def parse(name: str) -> tuple[str, str | None]:
  """(repo id, revision or None) of `hf-hub:ORG/NAME[@REVISION]`."""
  repo, _, revision = name.removeprefix(PREFIX).partition("@")
  if repo.count("/") != 1 or not all(repo.split("/")):
    raise ConfigError(f"{name!r} is not a Hub model name; write hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION.")
  return repo, revision or None


def download(name: str, filename: str) -> str:
  """The local path of `filename` in the repo `name`, from the cache or the Hub; a ConfigError if it has none."""
  import huggingface_hub  # Here, not at import: it reads HF_* settings from the environment when imported.
  from huggingface_hub import errors

  repo, revision = parse(name)
  try:
    return huggingface_hub.hf_hub_download(repo, filename, revision=revision)
  except (errors.EntryNotFoundError, errors.HfHubHTTPError, OSError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f"{name}: cannot get {filename} ({reason}).") from None


def weights_file(name: str) -> str:
  """The local path of the repo's `model.safetensors`; a repo with only a pickle gets a ConfigError saying so."""
  try:
    return download(name, WEIGHTS_FILE)
  except ConfigError:
    if _has_file(name, PICKLE_FILE):
      raise ConfigError(
        f"{name} holds only {PICKLE_FILE}, a pickled PyTorch checkpoint, which can run arbitrary code and is never "
        f"opened here; use a repo with {WEIGHTS_FILE} (timm's repos have one)."
      ) from None
    raise


def _has_file(name: str, filename: str) -> bool:
  """Whether the repo has `filename`, asking the cache first and the Hub only when online."""
  import huggingface_hub
  from huggingface_hub import constants, errors

  repo, revision = parse(name)
  if isinstance(huggingface_hub.try_to_load_from_cache(repo, filename, revision=revision), str):
    return True
  if constants.HF_HUB_OFFLINE:
    return False
  try:
    return huggingface_hub.file_exists(repo, filename, revision=revision)
  except (errors.HfHubHTTPError, OSError):
    return False


def resolve(name: str) -> HubModel:
  """The model, classes and preprocessing of the Hub repo `name`, from its `config.json`."""
  with open(download(name, CONFIG_FILE)) as f:
    config = json.load(f)
  architecture = config.get("architecture")
  if not architecture:
    raise ConfigError(f"{name}: config.json names no architecture; is it a timm repo?")
  family = timm.for_architecture(architecture)
  base = architecture.partition(".")[0]
  model_args = dict(config.get("model_args") or {})
  pretrained = config.get("pretrained_cfg") or {}
  num_classes = model_args.get("num_classes", config.get("num_classes", pretrained.get("num_classes", 1000)))
  model = ml_collections.ConfigDict({"name": family.architectures[base], **family.options(base, model_args)})
  side = model_args.get("img_size", 224)
  height, width = (pretrained.get("input_size") or (3, side, side))[1:]
  normalization = _normalization(pretrained.get("mean", IMAGENET_MEAN), pretrained.get("std", IMAGENET_STD))
  return HubModel(
    name=name,
    architecture=architecture,
    model=model,
    class_names=_class_names(name, config.get("label_names"), num_classes),
    image_size=(height, width),
    pp_eval=f"{_eval_resize(name, pretrained, height, width)}|{normalization}",
    normalization=normalization,
  )


def load_model(name: str) -> tuple[HubModel, Any, dict[str, Any]]:
  """(what the repo says, the built module, its variables fully restored from the repo's weights)."""
  from vitjax.transfer import importer  # The importer reads `hf-hub:` paths through this module.

  hub_model = resolve(name)
  module = models.from_config(hub_model.model, num_classes=len(hub_model.class_names))
  image_shape = (*hub_model.image_size, 3)
  abstract = jax.eval_shape(lambda: models.init_variables(module, jax.random.key(0), image_shape=image_shape))
  variables, _ = importer.load_variables(name, abstract)
  return hub_model, module, variables


def configure(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` for fine-tuning from the Hub repo of `config.pretrained.path` (others: `config` itself).

  The repo decides the model (name and architecture options; training options such as dropout stay), since its
  weights fit nothing else. With `config.pretrained.preprocessing="hub"` (the default) the data takes the repo's
  input size and normalisation: timm's eval transform and its default training transform (random-resized crop,
  flips); with "config" the config's `pp_train`/`pp_eval` stay as written (ViT position embeddings are resized to
  their size).
  """
  if not is_hub_name(config.pretrained.path):
    return config
  hub_model = resolve(config.pretrained.path)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if config.model.name != hub_model.model.name:
      logging.info("model.name %s -> %s: the model of %s.", config.model.name, hub_model.model.name, hub_model.name)
    config.model.update(hub_model.model)
    mode = config.pretrained.get("preprocessing", "hub")
    if mode not in ("hub", "config"):
      raise ConfigError(f"pretrained.preprocessing must be 'hub' or 'config', got {mode!r}.")
    if mode == "hub":
      config.data.pp_train, config.data.pp_eval = hub_model.pp_train, hub_model.pp_eval
  return config


def _eval_resize(name: str, pretrained: Mapping[str, Any], height: int, width: int) -> str:
  """timm's eval transform before normalising: resize to size / crop_pct (the shorter side, or both sides for
  crop_mode 'squash' and non-square sizes) with its interpolation, then the central crop."""
  crop_pct = pretrained.get("crop_pct", 0.875)
  method = pretrained.get("interpolation", "bilinear")
  if method not in INTERPOLATIONS:
    raise ConfigError(f"{name}: interpolation {method!r} is not supported; supported: {', '.join(INTERPOLATIONS)}.")
  scaled = (math.floor(height / crop_pct), math.floor(width / crop_pct))
  if pretrained.get("crop_mode", "center") == "squash" or height != width:
    resize = f"resize({scaled}, method={method!r})"
  else:
    resize = f"resize_small({scaled[0]}, method={method!r})"
  return f"{resize}|center_crop({(height, width)})"


def _normalization(mean: list[float], std: list[float]) -> str:
  """The pp op that gives what timm's mean/std normalisation gives: value_range(-1, 1) for mean = std = 0.5."""
  if all(m == 0.5 for m in mean) and all(s == 0.5 for s in std):
    return "value_range(-1, 1)"
  return f"normalize(mean={tuple(float(m) for m in mean)}, std={tuple(float(s) for s in std)})"


def _class_names(name: str, label_names: list[str] | None, num_classes: int) -> list[str]:
  """The repo's `label_names`, else ImageNet-1k's names for 1000 classes, else `class_{i}` (ImageNet-21k/22k)."""
  if label_names:
    if len(label_names) != num_classes:
      raise ConfigError(f"{name}: {len(label_names)} label_names for {num_classes} classes.")
    return list(label_names)
  if num_classes == 1000:
    return imagenet1k_classes()
  return [f"class_{i}" for i in range(num_classes)]


def imagenet1k_classes() -> list[str]:
  """The 1000 ImageNet-1k class names in label order (the first WordNet lemma of each synset)."""
  text = importlib.resources.files("vitjax.transfer").joinpath("imagenet1k_classes.txt").read_text()
  return text.splitlines()
