"""Every config: its argument parsing, the bounds of its `runlocal` smoke run, and that run end to end for 2 steps."""

import contextlib
import math
import os
import re

import pytest
import tensorflow_datasets as tfds

from configs import adapt_digits, baseline_digits, bit_r50x1, naflex_digits, quickstart, robust_digits, vit_b16
from tests.support import parse_config_flag
from vitjax.configs import common, finetune
from vitjax.train.loop import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every config's runlocal variant: (config module, argument, the model it trains).
RUNLOCAL = {
  "quickstart": (quickstart, "runlocal", "vit_micro16"),
  "baseline_digits": (baseline_digits, "runlocal", "vit_micro16"),  # The quickstart's run plus config.baseline.
  "vit_b16": (vit_b16, "cifar10,runlocal", "vit_ti16"),
  "vit_b16_freeze6": (vit_b16, "cifar10,freeze6,runlocal", "vit_ti16"),
  "bit_r50x1": (bit_r50x1, "cifar10,runlocal", "bit_r50x1"),
  "robust_digits": (robust_digits, "trades,runlocal", "vit_micro16"),  # The quickstart's run, adversarially trained.
  "adapt_digits": (adapt_digits, "inverted,dann,runlocal", "vit_micro16"),  # Two streams, DANN's heads.
  "naflex_digits": (naflex_digits, "runlocal", "naflexvit_micro4"),  # Trained end to end in test_naflex_training.
}
FINETUNE = {"vit_b16": vit_b16, "bit_r50x1": bit_r50x1}
CIFAR10_SIZES = {"train": 50_000, "test": 10_000}


@pytest.mark.parametrize("name", RUNLOCAL)
def test_runlocal_shrinks_the_run_but_keeps_the_recipe(name):
  module, arg, model = RUNLOCAL[name]
  config, full = module.get_config(arg), module.get_config(common.split_runlocal(arg)[0] or None)
  assert config.name == f"{full.name}_runlocal" and config.model.name == model
  for batch in (config.batch_size, config.eval_batch_size):
    assert batch <= 32 and batch % 8 == 0
  assert 0 < config.total_steps <= 20 and config.schedule.warmup_steps < config.total_steps
  assert max(config.log_every, config.eval_every, config.checkpoint_every) <= config.total_steps
  assert config.data.eval_split == f"{full.data.eval_split}[:64]"
  assert config.keep_checkpoints == 1 and config.data.shuffle_buffer <= 256
  # Feature probes (they read the whole training split) are dropped; every classification entry stays.
  assert {n for n, e in full.evals.items() if e.type == "classification"} == set(config.evals)
  # The same code path: data, loss, optimizer (freezing included) and schedule are the recipe's.
  for key in ("data.dataset", "data.train_split", "loss", "optimizer", "schedule.name", "data.mixup"):
    assert config[key] == full[key], key
  if module in FINETUNE.values():
    assert "random_crop(32)" in config.data.pp_train and config.data.pp_eval.startswith("resize(32)|")


@pytest.mark.parametrize("name", FINETUNE)
def test_finetune_arguments_fail_naming_the_choices(name):
  module = FINETUNE[name]
  assert module.get_config().name == f"{name}_cifar10"
  with pytest.raises(ValueError, match=re.escape(f"Unknown preset 'mnist' for {name}; choose one of: cifar10, ")):
    module.get_config("mnist,runlocal")
  strategies = ", ".join(finetune.STRATEGIES)
  with pytest.raises(ValueError, match=re.escape(f"strategy 'freeze_all'; choose one of: {strategies}")):
    module.get_config("cifar10,freeze_all,runlocal")


def test_quickstart_argument_fails_naming_the_choices():
  assert quickstart.get_config().name == "quickstart"
  with pytest.raises(ValueError, match="Unknown argument 'cifar10' for quickstart; choose one of: runlocal"):
    quickstart.get_config("cifar10")


def test_baseline_digits_argument_fails_naming_the_choices():
  assert baseline_digits.get_config().name == "baseline_digits"
  assert baseline_digits.get_config("runlocal").baseline.max_train_examples == common.RUNLOCAL_BASELINE_TRAIN_EXAMPLES
  with pytest.raises(ValueError, match="Unknown argument 'svm' for baseline_digits; choose one of: runlocal"):
    baseline_digits.get_config("svm")


def test_adapt_digits_arguments_fail_naming_the_choices():
  assert adapt_digits.get_config("colour,mae").name == "adapt_digits_colour_mae"
  evals = adapt_digits.get_config("colour,mae").evals  # Probes track self-supervised encoders.
  assert {"val", "target", "fewshot", "knn"} == set(evals) and evals.fewshot.shots == (10,)
  assert set(adapt_digits.get_config("colour,dann").evals) == {"val", "target"}
  with pytest.raises(ValueError, match="Bad argument 'blurred,dann' for adapt_digits: give SHIFT,OBJECTIVE"):
    adapt_digits.get_config("blurred,dann,runlocal")


def test_evaluator_options_override_from_the_command_line():
  config = parse_config_flag(
    f"--config={REPO}/configs/adapt_digits.py:rotated,mae", "--config.evals.knn.k=10", "--config.evals.val.every=7"
  )
  assert (config.evals.knn.k, config.evals.val.every, config.evals.fewshot.l2_reg) == (10, 7, 2.0**10)
  with pytest.raises(Exception, match="kk"):
    parse_config_flag(f"--config={REPO}/configs/adapt_digits.py:rotated,mae", "--config.evals.knn.kk=10")


def test_runlocal_from_the_command_line_with_checked_overrides():
  config = parse_config_flag(
    f"--config={REPO}/configs/vit_b16.py:cifar10,freeze6,runlocal", "--config.model.name=vit_s16"
  )
  assert config.name == "vit_b16_cifar10_freeze6_runlocal" and config.model.name == "vit_s16"
  config = parse_config_flag(f"--config={REPO}/configs/quickstart.py:runlocal", "--config.model.width=32")
  assert config.model.width == 32 and config.model.classifier == "gap"
  with pytest.raises(Exception, match="width"):
    parse_config_flag(f"--config={REPO}/configs/quickstart.py:runlocal", "--config.model.width=wide")


def _mock_cifar10(data_dir: str) -> contextlib.AbstractContextManager:
  """Random cifar10 examples (64 per split) behind real-sized metadata, so that split slices resolve."""
  builder = tfds.builder("cifar10", data_dir=data_dir)
  builder.data_path.mkdir(parents=True)
  template = tfds.core.ShardedFileTemplate(
    data_dir=builder.data_path, dataset_name="cifar10", filetype_suffix="tfrecord"
  )
  splits = [
    tfds.core.SplitInfo(name=split, shard_lengths=[size], num_bytes=0, filename_template=template.replace(split=split))
    for split, size in CIFAR10_SIZES.items()
  ]
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.info.write_to_directory(builder.data_path)
  return tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir)


# BiT-R50x1's runlocal shares vit_b16's path through the finetune builder and TFDS (its recipe is checked above).
@pytest.mark.parametrize("name", ["quickstart", "baseline_digits", "vit_b16", "adapt_digits"])
def test_runlocal_trains_end_to_end(name, digits_dir, tmp_path):
  module, arg, _ = RUNLOCAL[name]
  config = module.get_config(arg)
  config.total_steps = 2
  if name == "vit_b16":  # Its recipe and TFDS path with two narrow layers: a ViT-S/16 compile costs half a minute.
    config.model.update(num_layers=2, hidden_size=32, mlp_dim=64, num_heads=2)
  if config.data.dataset == "vitjax_digits":
    config.data.data_dir, data = digits_dir, contextlib.nullcontext()
  else:
    data = _mock_cifar10(str(tmp_path / "tfds"))
  with data:
    results = train_and_evaluate(config, str(tmp_path / "workdir"))
  assert results["step"] == 2
  assert math.isfinite(results["loss"]) and 0.0 <= results["accuracy"] <= 1.0
