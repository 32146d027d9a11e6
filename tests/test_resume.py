"""Crashes: a killed run resumes to the same per-step losses (SIGTERM across processes and damaged checkpoints:
tests/test_faults_multihost.py and tests/test_faults.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

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


# SIGTERM (save, exit 0, resume bit for bit) is tested with two processes, where it must also stop both at one step:
# tests/test_faults_multihost.py.
def test_killed_run_resumes_with_identical_losses(digits_dir, tmp_path, straight_losses):
  interrupted = tmp_path / "interrupted"
  _start_and_stop_after_first_checkpoint(_command(interrupted, digits_dir), interrupted, signal.SIGKILL)
  assert not os.path.exists(interrupted / "checkpoints" / "20")
  subprocess.run(_command(interrupted, digits_dir), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=300)
  resumed = _losses(interrupted)
  assert sorted(resumed) == list(range(1, 21))
  assert resumed == straight_losses  # Bit for bit: same batches, same dropout, same updates.
