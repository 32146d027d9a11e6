"""A trained model as a timm Hub repo: `model.safetensors` in timm's key layout, `config.json` and a model card.

The weights go through the model family's inverse mapping (`transfer.timm`, `to_timm`); `config.json` holds the
timm `architecture` and the `model_args` that rebuild this model, the `pretrained_cfg` of its eval preprocessing
(input size, crop, interpolation, mean/std) and the `label_names`. Before anything is written the folder is read
back as `hf-hub:` loading reads it, and must give the same module and bit-identical variables.
"""

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
import safetensors.numpy

from vitjax import data, models
from vitjax.data import preprocess
from vitjax.errors import ConfigError
from vitjax.transfer import hub, importer, timm

# Module fields that change training only: publishing may drop them, and loading gives the defaults.
_TRAINING_FIELDS = {
  "parent", "name", "num_classes", "dropout_rate", "attention_dropout_rate", "stochastic_depth", "head_bias_init",
  "dtype", "remat", "scan", "attention", "patch_sizes",
}  # fmt: skip
_RESIZES = ("resize", "resize_small")


def pretrained_cfg(pp_eval: str, image_size: tuple[int, int], num_classes: int) -> dict[str, Any]:
  """timm's `pretrained_cfg` for the eval preprocessing `pp_eval` whose output is `image_size` (height, width)."""
  scale, offset = (np.broadcast_to(x, (3,)) for x in data.pixel_affine(pp_eval))
  ops = dict(preprocess.calls(pp_eval))
  height, width = image_size
  resize = next((name for name in _RESIZES if name in ops), None)
  method = ops[resize].get("method", "bilinear") if resize else "bilinear"
  if method not in hub.INTERPOLATIONS:
    raise ConfigError(f"pp_eval resizes with {method!r}, which timm has no name for; use bilinear or bicubic.")
  crop_pct, crop_mode = 1.0, "squash"
  if resize == "resize_small":
    side, crop_mode = ops[resize]["size"], "center"
    crop_pct = round(height / side, 4)
    if math.floor(height / crop_pct) != side:  # timm resizes to floor(size / crop_pct): make it the same side.
      crop_pct = height / (side + 0.5)
  elif resize:
    crop_pct = height / preprocess.pair(ops[resize]["size"])[0]
  std = 1.0 / (255.0 * scale)
  return {
    "input_size": [3, height, width],
    "interpolation": method,
    "crop_pct": crop_pct,
    "crop_mode": crop_mode,
    "mean": [round(float(m), 6) for m in -offset * std],
    "std": [round(float(s), 6) for s in std],
    "num_classes": num_classes,
  }


@dataclasses.dataclass(frozen=True)
class Repo:
  """What `write` needs: the registered model name and module, its variables, classes and eval preprocessing, and
  the run's config and results for the model card."""

  model_name: str
  model: Any
  variables: Mapping[str, Any]
  class_names: Sequence[str]
  pp_eval: str
  image_size: tuple[int, int]
  config: ml_collections.ConfigDict | None = None
  results: Mapping[str, Any] | None = None


def write(repo: Repo, output: str) -> dict[str, Any]:
  """Writes the timm repo folder `output` (checked by reading it back first) and returns its config.json."""
  family, architecture = timm.for_model(repo.model_name)
  model_args = family.model_args(architecture, repo.model, repo.image_size[0])
  flat = {
    f"{collection}/{key}": np.asarray(value, np.float32)
    for collection, tree in repo.variables.items()
    for key, value in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/").items()
  }
  flat = family.complete(repo.model, flat, repo.image_size)
  state = family.to_timm(flat)
  config = {
    "architecture": architecture,
    "num_classes": len(repo.class_names),
    "model_args": model_args,
    "pretrained_cfg": pretrained_cfg(repo.pp_eval, repo.image_size, len(repo.class_names)),
    "label_names": list(repo.class_names),
  }
  os.makedirs(output, exist_ok=True)
  weights = os.path.join(output, hub.WEIGHTS_FILE)
  safetensors.numpy.save_file(state, weights, metadata={"format": "pt"})
  _check_reads_back(repo, config, weights, flat)
  with open(os.path.join(output, hub.CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=2)
  with open(os.path.join(output, "README.md"), "w") as f:
    f.write(model_card(config, repo.config, repo.results))
  return config


def _check_reads_back(repo: Repo, config: Mapping[str, Any], weights: str, flat: dict[str, np.ndarray]) -> None:
  """A ConfigError if the module that `config` builds or the variables `weights` give differ from `repo`'s (`flat`,
  completed by the family)."""
  family = timm.for_architecture(config["architecture"])
  options = family.options(config["architecture"], config["model_args"])
  rebuilt = models.build(family.architectures[config["architecture"]], num_classes=len(repo.class_names), **options)
  fields = {f.name for f in dataclasses.fields(rebuilt) if f.name not in _TRAINING_FIELDS}
  for name in sorted(fields):
    ours, theirs = getattr(repo.model, name, None), getattr(rebuilt, name)
    if _plain(ours) != _plain(theirs) and (name, ours, theirs) not in family.equivalent:
      raise ConfigError(
        f"timm's {config['architecture']} cannot express {name}={ours!r} (it would load as {theirs!r})."
      )
  written = flax.traverse_util.unflatten_dict(flat, sep="/")
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.float32), written)
  restored, _ = importer.load_variables(weights, abstract)
  restored = flax.traverse_util.flatten_dict(restored, sep="/")
  for key, ours in flat.items():
    if not np.array_equal(ours, np.asarray(restored[key])):
      raise ConfigError(f"{key} does not survive the timm layout; nothing was published.")


def _plain(value: Any) -> Any:
  """Sequences as tuples, so that a config's lists and a module's tuples compare equal."""
  return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def model_card(config: Mapping[str, Any], run: ml_collections.ConfigDict | None, results: Mapping | None) -> str:
  """The README.md of the repo: what was trained on what, how, what it scored, and how to load it."""
  lines = ["---", "library_name: timm", "tags: [image-classification, timm, vitjax]", "---", ""]
  lines += [f"# {config['architecture']} ({len(config['label_names'])} classes)", ""]
  if run is not None:
    lines += [
      f"Trained with vitjax (`{run.get('name', '')}`): model `{run.model.name}` on `{run.data.dataset}`"
      + (f" ({run.data.get('folder')})" if run.data.get("folder") else "")
      + f", {run.get('total_steps') or str(run.get('num_epochs')) + ' epochs'} steps of batch {run.batch_size},"
      + f" optimizer {run.optimizer.name} at learning rate {run.optimizer.learning_rate}"
      + (f", from {run.pretrained.path}" if run.pretrained.get("path") else ", from scratch")
      + ".",
      "",
    ]
  scores = {k: v for k, v in (results or {}).items() if isinstance(v, float) and not k.endswith("seconds")}
  if scores:
    lines += ["| metric | value |", "|---|---|", *(f"| {k} | {v:.4f} |" for k, v in sorted(scores.items())), ""]
    lines += [f"Measured on split `{results.get('split')}` at step {results.get('step')} (results.json).", ""]
  cfg = config["pretrained_cfg"]
  lines += [
    f"Input {cfg['input_size'][1]}x{cfg['input_size'][2]}, {cfg['interpolation']} resize (crop_pct {cfg['crop_pct']},"
    f" {cfg['crop_mode']}), mean {cfg['mean']}, std {cfg['std']}.",
    "",
    "```python",
    "import timm",
    'model = timm.create_model("hf-hub:ORG/NAME", pretrained=True).eval()  # or "local-dir:PATH"',
    "",
    "import vitjax",
    'classifier = vitjax.Classifier.load("hf-hub:ORG/NAME")',
    'print(classifier.top_k(["image.jpg"], k=3))',
    "```",
    "",
    "`python -m vitjax.predict --model=hf-hub:ORG/NAME --input=IMAGES` writes a CSV of the top classes.",
    "",
  ]
  return "\n".join(lines)


def write_classifier(classifier: Any, output: str, *, source: str) -> dict[str, Any]:
  """`write` for a loaded `deploy.Classifier`: a run's (its config and `results.json` go in the model card) or a
  Hub model's, `source` being where it was loaded from (a workdir or an `hf-hub:` name)."""
  if hub.is_hub_name(source):
    model_name, results = hub.resolve(source).model.name, None
  else:
    model_name, results = classifier.config.model.name, _results(source)
  shape = classifier.input_shape
  if not shape:
    raise ConfigError(f"pp_eval={classifier.preprocessing.spec!r} gives no fixed input size; end it with a resize.")
  repo = Repo(
    model_name=model_name,
    model=classifier.model,
    variables=jax.device_get(classifier.variables),
    class_names=classifier.class_names,
    pp_eval=classifier.preprocessing.spec,
    image_size=tuple(shape[:2]),
    config=classifier.config,
    results=results,
  )
  return write(repo, output)


def _results(workdir: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def push(folder: str, repo_id: str) -> str:
  """Uploads `folder` to the Hub model repo `repo_id` (created if missing; the token of `hf auth login` or
  HF_TOKEN) and returns the commit's URL."""
  import huggingface_hub  # Here, not at import: it reads HF_* settings from the environment when imported.

  huggingface_hub.create_repo(repo_id, exist_ok=True)
  info = huggingface_hub.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload from vitjax")
  return info.commit_url
