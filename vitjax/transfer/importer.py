"""Import of pretrained checkpoints: public ViT, hybrid and BiT `.npz` files, timm `.safetensors` state dicts (mapped
by `transfer.timm`), and this project's Orbax runs.

`load_pretrained(path, params)` returns `params` with every parameter the checkpoint holds, after mapping the public
names onto this project's tree (GUIDE section 3), resizing position embeddings to the model's grid and replacing
the head. Everything it does to a key is logged; anything it cannot explain is an error naming the key.
"""

import dataclasses
import math
import os
import re
from collections.abc import Iterable
from typing import Any

import flax
import jax
import numpy as np
from absl import logging

from vitjax import checkpoints
from vitjax.errors import ConfigError
from vitjax.transfer import hub, naflex_init, timm
from vitjax.transfer.posemb import resize_posemb

Flat = dict[str, Any]

_POSEMB = "Transformer/posembed_input/pos_embedding"
# Older public ViT files number encoder-block submodules globally; Flax linen numbers them per class.
_OLD_BLOCK_NAMES = {
  "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
  "LayerNorm_2": "LayerNorm_1",
  "MlpBlock_3": "MlpBlock_0",
}
_OLD_BLOCK_PATTERN = re.compile(rf"(encoderblock(?:_\d+)?)/({'|'.join(_OLD_BLOCK_NAMES)})/")
_STACKED_BLOCKS = "Transformer/encoderblock/"
_BLOCK_KEY = re.compile(r"Transformer/encoderblock_(\d+)/(.+)")
_NORM_PARAM = re.compile(r"(^|/)(gn\w*|group_norm|LayerNorm\w*|encoder_norm)/(scale|bias)$")
_HEADS_PARAM = re.compile(r"MultiHeadDotProductAttention_\d+/(query|key|value|out)/(kernel|bias)$")


@dataclasses.dataclass
class LoadReport:
  """What happened to each key: loaded as is, resized, reshaped, re-initialised, or dropped from the checkpoint."""

  loaded: list[str] = dataclasses.field(default_factory=list)
  resized: dict[str, str] = dataclasses.field(default_factory=dict)
  reshaped: dict[str, str] = dataclasses.field(default_factory=dict)
  reinitialized: dict[str, str] = dataclasses.field(default_factory=dict)
  dropped: dict[str, str] = dataclasses.field(default_factory=dict)

  def log(self, path: str) -> None:
    logging.info("Loaded %d parameters from %s.", len(self.loaded), path)
    for title, entries in (
      ("Resized", self.resized),
      ("Reshaped", self.reshaped),
      ("Not loaded (model's own value kept)", self.reinitialized),
      ("In the checkpoint, not used", self.dropped),
    ):
      for key, why in entries.items():
        logging.info("%s: %s (%s)", title, key, why)


# The end of a mismatch error: what the caller can change. Fine-tuning (load_pretrained) may leave keys out; loading
# a model whole for evaluation or prediction (load_variables) may not.
DONT_LOAD_HINT = (
  "Is it for another architecture? Keys that should keep the model's value go in dont_load "
  "(config.pretrained.dont_load for training)."
)
EVERY_KEY_HINT = (
  "Every key loads here, the head included: give the architecture and number of classes it was trained with "
  "(Classifier.load's model= and class_names=, or config.model), or fine-tune it with config.pretrained.path, "
  "whose dont_load leaves keys out."
)


def load_pretrained(
  path: str,
  params: Any,
  *,
  dont_load: Iterable[str] = (r"head/.*",),
  head_bias_init: float = 0.0,
  keep_pre_logits: bool = False,
) -> Any:
  """`params` (the freshly initialised tree of the target model) filled from the checkpoint at `path`.

  `path` is a public `.npz` file, a timm `.safetensors` state dict, or an Orbax checkpoint of this project (a
  workdir, its `checkpoints` folder, one step of it, or a plain saved pytree; full train states contribute their
  `params`). Keys fully matching a
  `dont_load` regex keep the model's value, except the head, which restarts at zero kernel and `head_bias_init`
  bias. `pre_logits` is taken from the checkpoint only with `keep_pre_logits`. Returns host numpy arrays in the
  structure of `params`; leaves of `params` may be `jax.ShapeDtypeStruct`s for keys that are loaded.
  """
  source, _, _ = read_checkpoint(path)
  flat, report = match_params(
    source,
    flax.traverse_util.flatten_dict(params, sep="/"),
    dont_load=dont_load,
    head_bias_init=head_bias_init,
    keep_pre_logits=keep_pre_logits,
  )
  report.log(path)
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def load_batch_stats(path: str, batch_stats: Any) -> Any:
  """`batch_stats` (the target model's BatchNorm statistics) with every entry that the checkpoint at `path` holds in
  the same shape, so that a fine-tuned model starts from the statistics its weights were trained with; entries it
  lacks keep the model's values. Host numpy arrays in the structure of `batch_stats`."""
  _, collections, _ = read_checkpoint(path)
  source = flax.traverse_util.flatten_dict(collections.get("batch_stats") or {}, sep="/")
  target = flax.traverse_util.flatten_dict(batch_stats, sep="/")
  fits = {k for k, v in target.items() if k in source and np.shape(source[k]) == tuple(np.shape(v))}
  logging.info("Loaded %d of %d BatchNorm statistics from %s.", len(fits), len(target), path)
  out = {k: np.asarray(source[k] if k in fits else v) for k, v in target.items()}
  return flax.traverse_util.unflatten_dict(out, sep="/")


def load_variables(path: str, variables: Any, *, params_key: str = "params") -> tuple[Any, dict[str, Any]]:
  """Model variables fully restored from `path` for evaluation, and the run metadata (`step`, ...) if any.

  Every parameter must come from the checkpoint, the head included; so must BatchNorm `batch_stats` if the model
  has them. `variables` gives the target structure and may be abstract (`jax.eval_shape` of the model's init).
  `params_key` "ema_params" takes a run's moving average of the parameters instead.
  """
  source, collections, meta = read_checkpoint(path, params_key=params_key)
  params, _ = match_params(
    source,
    flax.traverse_util.flatten_dict(variables["params"], sep="/"),
    dont_load=(),
    keep_pre_logits=True,
    hint=EVERY_KEY_HINT,
  )
  restored = {"params": flax.traverse_util.unflatten_dict(params, sep="/")}
  for name in variables.keys() - {"params"}:
    if name not in collections:
      raise ConfigError(f"The model has {name!r} variables but the checkpoint {path!r} has none.")
    restored[name] = _check_same_shapes(collections[name], variables[name], path)
  return restored, meta


def read_checkpoint(path: str, *, params_key: str = "params") -> tuple[Flat, dict[str, Any], dict[str, Any]]:
  """(flat `/`-separated params under this project's names, other variable collections such as `batch_stats`,
  run metadata) of a public `.npz` file, a timm `.safetensors` file or an Orbax checkpoint folder.

  A folder holding a train state or a variables dict contributes its `params_key` entry; any other saved pytree
  is taken to be the parameters themselves.
  """
  if os.path.isdir(path):
    tree, meta = checkpoints.read_orbax(path)
    if "params" not in tree:
      return flax.traverse_util.flatten_dict(tree, sep="/"), {}, meta
    if not tree.get(params_key):
      raise ConfigError(f"Checkpoint {path!r} has no {params_key!r} (it has: {', '.join(sorted(tree))}).")
    collections = {"batch_stats": tree["batch_stats"]} if tree.get("batch_stats") else {}
    return flax.traverse_util.flatten_dict(tree[params_key], sep="/"), collections, meta
  if hub.is_hub_name(path):
    path = hub.weights_file(path)
  timm.refuse_pickle(path)
  if timm.is_safetensors(path):
    return *timm.read(path), {}
  if not os.path.exists(path):
    raise ConfigError(f"No checkpoint at {path!r}.")
  with open(path, "rb") as f:
    npz = np.load(f, allow_pickle=False)
    return canonical_names(dict(npz.items())), {}, {}


def canonical_names(flat: Flat) -> Flat:
  """Public checkpoint names -> this project's: drops `params/` and BiT's `resnet/` prefixes, maps TF's
  `gamma`/`beta` to `scale`/`bias` and old global-index block names to per-class ones, unstacks blocks stored on
  a leading depth axis, and moves big_vision's top-level `pos_embedding` into the encoder."""
  if any(k.startswith("params/") for k in flat):
    ignored = sorted(k for k in flat if not k.startswith("params/"))
    if ignored:
      logging.info("Ignoring %d non-parameter entries of the checkpoint (%s, ...).", len(ignored), ignored[0])
    flat = {k[len("params/") :]: v for k, v in flat.items() if k.startswith("params/")}
  out = {}
  for key, value in flat.items():
    key = key[len("resnet/") :] if key.startswith("resnet/") else key
    key = re.sub(r"/gamma$", "/scale", re.sub(r"/beta$", "/bias", key))
    key = _OLD_BLOCK_PATTERN.sub(lambda m: f"{m[1]}/{_OLD_BLOCK_NAMES[m[2]]}/", key)
    key = _POSEMB if key == "pos_embedding" else key
    if key.startswith(_STACKED_BLOCKS):
      rest = key[len(_STACKED_BLOCKS) :]
      out.update({f"Transformer/encoderblock_{i}/{rest}": layer for i, layer in enumerate(value)})
    else:
      out[key] = value
  return out


def blocks_like(source: Flat, target: Flat) -> Flat:
  """`source` with its ViT encoder blocks in `target`'s layout: one key per block (`encoderblock_{i}`), or stacked
  on a leading depth axis (`encoderblock`, a model with `scan`), so per-block and scanned runs load into each other.

  Blocks are stacked only when they are numbered 0..n-1 without gaps; otherwise they stay per block, and the
  mismatch is reported by key.
  """
  per_block = {}
  for key, value in source.items():
    if key.startswith(_STACKED_BLOCKS):
      rest = key[len(_STACKED_BLOCKS) :]
      per_block.update({f"Transformer/encoderblock_{i}/{rest}": layer for i, layer in enumerate(value)})
    else:
      per_block[key] = value
  if not any(key.startswith(_STACKED_BLOCKS) for key in target):
    return per_block
  out, layers = {}, {}
  for key, value in per_block.items():
    match = _BLOCK_KEY.fullmatch(key)
    if match:
      layers.setdefault(match[2], {})[int(match[1])] = value
    else:
      out[key] = value
  for rest, by_index in layers.items():
    if sorted(by_index) == list(range(len(by_index))):
      out[_STACKED_BLOCKS + rest] = np.stack([np.asarray(by_index[i]) for i in range(len(by_index))])
    else:
      out.update({f"Transformer/encoderblock_{i}/{rest}": v for i, v in by_index.items()})
  return out


def match_params(
  source: Flat,
  target: Flat,
  *,
  dont_load: Iterable[str],
  head_bias_init: float = 0.0,
  keep_pre_logits: bool,
  hint: str = DONT_LOAD_HINT,
) -> tuple[Flat, LoadReport]:
  """The `target` keys filled from `source` (both flat, canonical names), and a report of every decision; `hint`
  ends the error, saying what the caller can change.

  Raises ValueError naming the first key (in the order of `target`) that is missing from the checkpoint or has a
  shape no known transformation explains, or else the first checkpoint key the model has no place for.
  """
  if naflex_init.is_vit_into_naflex(source, target):
    source = naflex_init.from_vit(source, target)
  source = blocks_like(source, target)
  patterns = [re.compile(p) for p in dont_load]
  skip = lambda key: any(p.fullmatch(key) for p in patterns)  # noqa: E731
  report, out, problems = LoadReport(), {}, []
  for key, model_value in target.items():
    if skip(key) or (key.startswith("pre_logits/") and not keep_pre_logits):
      out[key] = _fresh_value(key, model_value, head_bias_init=head_bias_init)
      report.reinitialized[key] = "matches dont_load" if skip(key) else "keep_pre_logits is False"
    elif key not in source:
      problems.append(f"{key} {tuple(model_value.shape)} is missing from the checkpoint")
    else:
      value, why = _fit(key, np.asarray(source[key]), tuple(model_value.shape))
      if value is None:
        problems.append(
          f"{key} has shape {tuple(source[key].shape)} in the checkpoint but {tuple(model_value.shape)} in the model"
        )
        continue
      out[key] = value.astype(model_value.dtype)
      report.loaded.append(key)
      if why:
        (report.resized if key == _POSEMB else report.reshaped)[key] = why
  for key in sorted(source.keys() - set(report.loaded)):
    if key in target and key not in report.reinitialized:
      continue  # Already reported as a shape mismatch.
    if skip(key):
      report.dropped[key] = "matches dont_load"
    elif key.startswith("pre_logits/") and not keep_pre_logits:
      report.dropped[key] = "keep_pre_logits is False"
    else:
      problems.append(f"{key} {tuple(source[key].shape)} is in the checkpoint but not in the model")
  if problems:
    _log_mismatches(problems)
    raise ConfigError(
      f"Checkpoint does not fit the model: {problems[0]}"
      + (f" (and {len(problems) - 1} more mismatches)" if len(problems) > 1 else "")
      + f". {hint}"
    )
  return out, report


def _log_mismatches(problems: list[str]) -> None:
  """One warning line counting the mismatches by kind; each one at verbosity 1 (`--verbosity=1`)."""
  for problem in problems:
    logging.vlog(1, "Checkpoint mismatch: %s.", problem)
  missing = sum("is missing from the checkpoint" in problem for problem in problems)
  extra = sum("is in the checkpoint but not in the model" in problem for problem in problems)
  logging.warning(
    "Checkpoint mismatch: %d keys (%d missing from the checkpoint, %d not in the model, %d of another shape).",
    len(problems),
    missing,
    extra,
    len(problems) - missing - extra,
  )


def _fresh_value(key: str, model_value: Any, *, head_bias_init: float) -> Any:
  """The value of a key that is not loaded: the model's own, except a new head (zero kernel, constant bias)."""
  if key.startswith("head/"):
    fill = head_bias_init if key.endswith("bias") else 0.0
    return np.full(model_value.shape, fill, model_value.dtype)
  if isinstance(model_value, jax.ShapeDtypeStruct):
    raise ValueError(
      f"{key} is not loaded (dont_load or keep_pre_logits), so it needs an initialised value, not a shape."
    )
  return model_value


def _fit(key: str, value: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str]:
  """`value` brought to `shape` by a known transformation and a note of it, or (None, '') if there is none."""
  if value.shape == shape:
    return value, ""
  if key == _POSEMB and value.ndim == 3 and len(shape) == 3 and value.shape[2] == shape[2]:
    try:
      return resize_posemb(value, shape[1]), f"{value.shape} -> {shape}"
    except ValueError:
      return None, ""
  if (
    _NORM_PARAM.search(key)
    and value.size == math.prod(shape)
    and value.squeeze().shape == tuple(d for d in shape if d != 1)
  ):
    return value.reshape(shape), f"{value.shape} -> {shape}"
  if _HEADS_PARAM.search(key) and value.size == math.prod(shape) and value.ndim == len(shape):
    # timm's fused qkv does not record the head count: regrouping heads x head_dim is a plain reshape.
    return value.reshape(shape), f"{value.shape} -> {shape}"
  return None, ""


def _check_same_shapes(tree: Any, expected: Any, path: str) -> Any:
  """`tree` unchanged if it has the structure and shapes of `expected`, else a ValueError naming the first key."""
  flat, want = (flax.traverse_util.flatten_dict(t, sep="/") for t in (tree, expected))
  for key in want:
    if key not in flat or np.shape(flat[key]) != tuple(want[key].shape):
      got = np.shape(flat[key]) if key in flat else "nothing"
      raise ConfigError(f"Checkpoint {path!r} does not fit: {key} is {got} there but {tuple(want[key].shape)} here.")
  extra = sorted(flat.keys() - want.keys())
  if extra:
    raise ConfigError(f"Checkpoint {path!r} does not fit: it has {extra[0]} which the target lacks.")
  return tree
