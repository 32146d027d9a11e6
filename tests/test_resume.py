"""Preemption and crashes: a killed run resumes to the same per-step losses; a broken checkpoint is skipped."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support import tiny_config
from vitjax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(workdir, digits_dir):
  return [
    sys.executable,
    "-m",
    "vitjax.main",
    "--config=configs/quickstart.py",
    f"--workdir={workdir}",
    f"--config.data.data_dir={digits_dir}",
    "--config.total_steps=20",
    "--config.batch_size=16",
    "--config.eval_batch_size=360",
    "--config.log_every=1",
    "--config.eval_every=20",
    "--config.checkpoint_every=5",
    "--config.model.dropout_rate=0.1",
  ]


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if r["split"] == "train"}


def _env():
  return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _start_and_stop_after_first_checkpoint(command, workdir, sig):
  process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = os.path.join(workdir, "checkpoints", "5", "state")
  deadline = time.time() + 300
  while not os.path.exists(first) and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  process.send_signal(sig)
  return process.wait(timeout=120)


@pytest.fixture(scope="module")
def straight_losses(digits_dir, tmp_path_factory):
  straight = tmp_path_factory.mktemp("straight")
  subprocess.run(_command(straight, digits_dir), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=300)
  return _losses(straight)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_run_resumes_with_identical_losses(digits_dir, tmp_path, straight_losses, sig):
  interrupted = tmp_path / "interrupted"
  code = _start_and_stop_after_first_checkpoint(_command(interrupted, digits_dir), interrupted, sig)
  if sig == signal.SIGTERM:
    assert code == 0  # Saved and exited cleanly, before the end.
    with open(interrupted / "results.json") as f:
      assert json.load(f)["stop_reason"] == "SIGTERM"
  assert not os.path.exists(interrupted / "checkpoints" / "20")
  subprocess.run(_command(interrupted, digits_dir), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=300)
  resumed = _losses(interrupted)
  assert sorted(resumed) == list(range(1, 21))
  assert resumed == straight_losses  # Bit for bit: same batches, same dropout, same updates.


def test_unreadable_newest_checkpoint_falls_back_to_the_previous(digits_dir, tmp_path, caplog):
  config = tiny_config(digits_dir, total_steps=4)
  config.log_every = config.eval_every = config.checkpoint_every = 2
  workdir = str(tmp_path)
  loop.train_and_evaluate(config, workdir)
  state_dir = os.path.join(workdir, "checkpoints", "4", "state")
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(max(os.path.getsize(f.name) // 3, 0))
  config.total_steps = 6
  with caplog.at_level(logging.WARNING):
    results = loop.train_and_evaluate(config, workdir)
  assert "Checkpoint at step 4 cannot be restored" in caplog.text
  assert results["step"] == 6
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [r["step"] for r in map(json.loads, f) if r["split"] == "train"]
  assert steps == [2, 4, 6]  # Steps 3 and 4 were trained again from the step-2 checkpoint.
