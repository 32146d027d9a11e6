"""Which source a data config names: an embedded dataset, a folder of images, or any TFDS dataset.

``from_config`` is where a data config is checked, so that a bad dataset name, option or preprocessing spec fails
before any data is read or any model is built.
"""

import functools

import ml_collections
import tensorflow_datasets as tfds

from vitjax.data import canvas, digits, folders, mixing, preprocess, seqlens, shifts
from vitjax.data.source import Source
from vitjax.data.tfds_source import TfdsSource
from vitjax.errors import ConfigError

EMBEDDED = {
  "vitjax_digits": digits.VitjaxDigits,
  # Synthetic domain shifts of the digits (shifts.py): vitjax_digits_inverted, _rotated, _noised, _colour.
  **{f"vitjax_digits_{name}": functools.partial(shifts.VitjaxDigitsShifted, config=name) for name in shifts.SHIFTS},
  "vitjax_digits_canvas": canvas.VitjaxDigitsCanvas,  # The digits on wide, tall and square canvases (NaFlex).
}
FOLDERS = {"folder": folders.FolderSource, "multilabel_folder": folders.CsvFolderSource}


def from_config(config: ml_collections.ConfigDict) -> Source:
  """The source that ``config`` (the data config) names; bad names, options and specs fail here, naming the fix."""
  mixing.from_config(config.mixup)
  seqlens.check(config)
  for seq_len in seqlens.lengths(config) or (None,):
    _check_pp(seqlens.at_seq_len(config, seq_len), "pp_train", "pp_eval")
  if config.dataset in FOLDERS:
    return _folder(config, config.dataset, config.folder, config.train_split, config.eval_split)
  return builder_by_name(
    config.dataset,
    data_dir=config.data_dir,
    image_key=config.image_key,
    label_key=config.label_key,
    classes=config.classes,
  )


def target_from_config(config: ml_collections.ConfigDict) -> Source | None:
  """The second, unlabelled source ``config.target`` names (a TFDS or embedded name, or a folder kind reading
  ``config.target_folder``), or None when there is none; its labels, if any, only score the target eval split."""
  if not config.target:
    return None
  _check_pp(config, "target_pp", "target_pp_eval")
  if config.target in FOLDERS:
    return _folder(config, config.target, config.target_folder, config.target_split, config.target_eval_split)
  return builder_by_name(config.target, data_dir=config.data_dir, classes=config.classes)


def _check_pp(config: ml_collections.ConfigDict, *keys: str) -> None:
  """A ConfigError naming the first of the preprocessing specs `keys` that does not parse."""
  for key in keys:
    try:
      preprocess.parse(config[key])
    except ValueError as e:
      raise ConfigError(f"config.data.{key}={config[key]!r}: {e}") from None


def _folder(
  config: ml_collections.ConfigDict, kind: str, folder: str, train_split: str, eval_split: str | None
) -> Source:
  """The folder source of kind `kind` (a `FOLDERS` key) reading `folder`, its splits as given."""
  return FOLDERS[kind](
    folder,
    train_split=train_split,
    splits=[eval_split] if eval_split else [],
    classes=config.classes,
    strict=config.strict,
  )


def builder_by_name(
  name: str,
  *,
  data_dir: str | None = None,
  image_key: str = "image",
  label_key: str = "label",
  classes: tuple[int | str, ...] = (),
) -> Source:
  """An embedded or TFDS dataset by name; unknown names fail with the valid choices."""
  if name in EMBEDDED:
    builder = EMBEDDED[name](data_dir=data_dir)
  else:
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise ConfigError(
        f"Unknown dataset {name!r}; choose an embedded one ({', '.join(EMBEDDED)}), a folder of images "
        f"({', '.join(FOLDERS)}, with config.data.folder) or any TFDS name (see tfds.list_builders(), e.g. "
        f"cifar10, imagenet2012)."
      ) from None
  return TfdsSource(builder, image_key=image_key, label_key=label_key, classes=classes)
