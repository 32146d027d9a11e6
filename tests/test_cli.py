"""The command line a newcomer meets: one-line config errors found before anything heavy loads, `--help`,
`--mode=describe`, progress by the clock, and a console that shows a header, progress and the result."""

import json
import logging
import os
import subprocess
import sys
from unittest import mock

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from clu import metric_writers
from PIL import Image

from vitjax import checkpoints, console, describe, preflight
from vitjax.configs import common
from vitjax.errors import ConfigError
from vitjax.train import hooks
from vitjax.transfer import importer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*flags: str, timeout: int = 300) -> subprocess.CompletedProcess:
  command = [sys.executable, "-m", "vitjax.main", *flags]
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_the_entry_point_and_its_checks_load_neither_jax_nor_tensorflow():
  probe = (
    "import sys, vitjax, vitjax.main; "
    "assert issubclass(vitjax.ConfigError, ValueError) and vitjax.ConfigError is vitjax.main.ConfigError; "
    "print(sorted(m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules))"
  )
  run = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
  assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr[-2000:]


def _one_class_folder(root):
  os.makedirs(root / "only")
  for i in range(2):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "only" / f"{i}.png")
  return root


@pytest.mark.parametrize("case", ["no_config_file", "config_raises", "pickled_weights"])
def test_config_mistakes_are_one_line_and_touch_no_workdir(tmp_path, case):
  workdir = tmp_path / "run"
  flags = {
    "no_config_file": ["--config=configs/no_such_config.py"],
    "config_raises": [f"--config=configs/folder.py:{_one_class_folder(tmp_path / 'images')}"],
    "pickled_weights": ["--config=configs/quickstart.py", f"--config.pretrained.path={tmp_path / 'vit.pth'}"],
  }[case]
  run = _main(*flags, f"--workdir={workdir}")
  expected = {
    "no_config_file": "error: there is no config file 'configs/no_such_config.py'",
    "config_raises": "error: configs/folder.py:",
    "pickled_weights": "is a pickled PyTorch checkpoint",
  }[case]
  assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1, run.stderr[-3000:]
  assert run.stderr.startswith("error: ") and expected in run.stderr, run.stderr
  assert not workdir.exists()


def test_other_errors_keep_their_traceback(tmp_path):
  probe = (
    "import sys; from vitjax import main; from vitjax.train import loop\n"
    "def fail(config, workdir):\n"
    "  raise ValueError('an internal failure')\n"
    "loop.train_and_evaluate = fail\n"
    f"sys.argv = ['main', '--config=configs/quickstart.py', '--workdir={tmp_path}']\n"
    "main.app.run(main.main, flags_parser=main.parse_flags)\n"
  )
  run = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 1
  assert "Traceback (most recent call last)" in run.stderr and "ValueError: an internal failure" in run.stderr


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"batch_size": 0}, "config.batch_size=0 must be at least 1."),
    ({"eval_batch_size": -8}, "config.eval_batch_size=-8 must be at least 1."),
    ({"total_steps": 0, "num_epochs": 0.0}, "config.num_epochs=0.0 must be positive"),
    ({"log_every": -1}, "config.log_every=-1 must be 0 or more."),
    ({"pretrained.path": "/nonexistent/ViT-B_16.npz"}, "does not exist: give a public .npz"),
    ({"pretrained.path": "weights.pt"}, "is a pickled PyTorch checkpoint"),
    ({"objective": "distill", "distill.checkpoint": "/nonexistent/run"}, "config.distill.checkpoint="),
    ({"distributed.heartbeat_timeout": 0}, "config.distributed.heartbeat_timeout=0 must be a positive number"),
    ({"distributed.init_timeout": -5}, "config.distributed.init_timeout=-5 must be a positive number"),
  ],
)
def test_validate_rejects_cheap_mistakes(overrides, message):
  config = common.get_base_config()
  config.update_from_flattened_dict(overrides)
  with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
    preflight.validate(config, None)


def test_validate_accepts_hub_names_runs_and_weight_files(tmp_path):
  config = common.get_base_config()
  config.pretrained.path = "hf-hub:timm/vit_base_patch16_224.augreg_in21k"
  preflight.validate(config, str(tmp_path / "new_run"))
  (tmp_path / "weights.npz").write_bytes(b"")
  for path in (str(tmp_path), str(tmp_path / "weights.npz")):
    config.pretrained.path = path
    preflight.validate(config, str(tmp_path / "new_run"))
  (tmp_path / "weights.h5").write_bytes(b"")
  config.pretrained.path = str(tmp_path / "weights.h5")
  with pytest.raises(ConfigError, match="neither a .npz nor a .safetensors"):
    preflight.validate(config, None)
  (tmp_path / "a_file").write_text("")
  config.pretrained.path = None
  with pytest.raises(ConfigError, match="is a file, not a folder"):
    preflight.validate(config, str(tmp_path / "a_file"))


def test_modes_that_read_a_run_need_one_in_the_workdir(tmp_path):
  config = common.get_base_config()
  for mode in ("eval", "robustness", "explain"):
    with pytest.raises(ConfigError, match="holds no training run"):
      preflight.validate(config, str(tmp_path), mode=mode)
  (tmp_path / checkpoints.CONFIG_FILE).write_text("{}")
  for mode in ("eval", "robustness", "explain"):
    preflight.validate(config, str(tmp_path), mode=mode)
  config.eval.checkpoints = (str(tmp_path),)
  preflight.validate(config, str(tmp_path / "reports"), mode="eval")


def test_help_exits_zero_and_names_describe():
  run = _main("--help", timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "describe" in run.stdout and "--workdir" in run.stdout


def test_describe_prints_every_key_with_its_value_and_doc():
  run = _main("--config=configs/quickstart.py", "--mode=describe", "--config.batch_size=48")
  assert run.returncode == 0, run.stderr[-3000:]
  out = run.stdout
  assert "batch_size = 48  # Global, over all devices and processes." in out
  assert "\n[data]  `config.data`: which dataset" in out and "  data.shuffle_buffer = " in out
  assert "  model.name = 'vit_micro16'" in out
  keys = [line.split(" = ")[0].strip() for line in out.splitlines() if " = " in line and line.startswith("  ")]
  assert len(keys) == len(set(keys)) and set(keys) == _base_config_keys()


def _base_config_keys() -> set[str]:
  """Every key of the base config, built in a fresh process as the command builds it: this process also holds
  the model families and evaluators that other test modules register."""
  script = (
    "from vitjax.configs import common\n"
    "def keys(tree, prefix=''):\n"
    "  for k, v in tree.items():\n"
    "    yield from keys(v, f'{prefix}{k}.') if isinstance(v, dict) else [prefix + k]\n"
    "print('\\n'.join(keys(common.get_base_config().to_dict())))"
  )
  command = [sys.executable, "-c", script]
  run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
  return set(run.stdout.split())


def test_key_docs_reads_comments_beside_and_above_and_docstrings():
  source = '''
def get_base_config():
  config = ml_collections.ConfigDict()
  config.size = 3  # How big.
  # Both of these
  # steer it.
  config.steer = 1
  config.part = _part()
  return config


def _part():
  """`config.part`: a section."""
  return ml_collections.ConfigDict(
    {
      "alpha": 1.0,  # Alpha's doc.
      "beta": 2,
    }
  )
'''
  docs = describe.key_docs(source)
  assert docs["size"].beside == "How big." and docs["steer"].above == "Both of these steer it."
  assert docs["part"].above == "`config.part`: a section." and docs["part.alpha"].beside == "Alpha's doc."
  config = ml_collections.ConfigDict({"size": 3, "steer": 1, "part": {"alpha": 1.0, "beta": 2}})
  text = describe.describe(config, docs)
  assert text.splitlines() == [
    "[general]",
    "  size = 3  # How big.",
    "  # Both of these steer it.",
    "  steer = 1",
    "",
    "[part]  `config.part`: a section.",
    "  part.alpha = 1.0  # Alpha's doc.",
    "  part.beta = 2",
  ]


def _train_log(tmp_path, **kwargs) -> hooks.TrainLog:
  return hooks.TrainLog(
    writer=metric_writers.MultiWriter([]),
    history_path=str(tmp_path / "metrics.jsonl"),
    intervals=(100,),
    batch_size=8,
    host_metrics=lambda metrics: [{k: np.asarray(v) for k, v in m.items()} for m in metrics],
    last_checkpoint=lambda: None,
    **kwargs,
  )


def _steps(log: hooks.TrainLog, ctx: hooks.Context, count: int) -> None:
  for _ in range(count):
    ctx.step += 1
    ctx.step_metrics = {"loss": jnp.float32(2.0), "grad_norm": jnp.float32(1.0)}
    log(ctx)
    log.step_done(ctx)


def test_progress_comes_by_the_clock_and_records_by_the_step(tmp_path):
  log, ctx = _train_log(tmp_path, progress_seconds=0.0, bar=False), hooks.Context(num_steps=5, meta={})
  with mock.patch.object(hooks.logging, "info") as info:
    _steps(log, ctx, 5)
  lines = [call.args[0] for call in info.call_args_list]
  assert lines[0].startswith("step 1/5: first step done in ") and "compiling" in lines[0]
  assert [line.split(" |")[0] for line in lines[1:]] == [f"step {s}/5 ({20 * s}%)" for s in range(2, 6)]
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == [5]  # Only at the last step: intervals=(100,).
  assert ctx.meta["train_seconds"] > 0


def test_no_line_between_records_within_the_interval(tmp_path):
  log, ctx = _train_log(tmp_path, bar=False), hooks.Context(num_steps=4, meta={})
  with mock.patch.object(hooks.logging, "info") as info:
    _steps(log, ctx, 4)
  assert [call.args[0].split(" |")[0].split(":")[0] for call in info.call_args_list] == ["step 1/4", "step 4/4 (100%)"]


def test_a_bar_counts_the_steps_when_asked(tmp_path, capsys):
  log, ctx = _train_log(tmp_path, bar=True), hooks.Context(num_steps=6, meta={})
  _steps(log, ctx, 6)
  log.close()
  assert "6/6" in capsys.readouterr().err


def test_checkpoint_mismatches_are_one_warning_line():
  target = {f"block{i}/kernel": np.zeros((2, 2), np.float32) for i in range(5)}
  source = {"other/kernel": np.zeros((2, 2), np.float32), "block0/kernel": np.zeros((3, 3), np.float32)}
  with mock.patch.object(importer.logging, "warning") as warning, pytest.raises(ConfigError, match="does not fit"):
    importer.match_params(source, target, dont_load=(), keep_pre_logits=False)
  assert warning.call_count == 1
  assert warning.call_args.args[1:] == (6, 4, 1, 1)


def test_library_noise_is_filtered_and_other_warnings_show():
  keep = console.LibraryNoiseFilter().filter

  def record(level, message, path="/site-packages/tensorflow_datasets/core/features/feature.py"):
    return logging.LogRecord("absl", level, path, 1, message, None, None)

  assert not keep(record(logging.WARNING, "`ClassLabel.dtype` is deprecated. Please change your code"))
  assert not keep(record(logging.WARNING, "`read` option is deprecated. Use `reload` to read from disk."))
  assert not keep(record(logging.INFO, "Reading checkpoint", path="/site-packages/orbax/checkpoint/a.py"))
  assert keep(record(logging.WARNING, "Checkpoint at step 4 cannot be restored"))
  assert keep(record(logging.INFO, "step 5/20 (25%)", path="/repo/vitjax/train/hooks.py"))


def test_a_runlocal_run_prints_a_header_progress_and_the_result(tmp_path):
  run = _main("--config=configs/quickstart.py:runlocal", f"--workdir={tmp_path}", timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  console = run.stderr.strip().splitlines()
  assert any("first step done in" in line for line in console) and any("step 20/20 (100%)" in line for line in console)
  assert not [line for line in console if "train/" in line or "deprecated" in line or line.startswith("|")]
  assert len(console) <= 16, "\n".join(console)
  assert run.stdout.startswith("Final test[:64] accuracy: ")
  assert "Total: " in (tmp_path / "params.txt").read_text()
