"""Two processes on 127.0.0.1 through jax.distributed (CPU collectives) against one process with all devices."""

import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch", "local_multiprocess.sh")


def _env(devices: int) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(DEVICES_PER_PROCESS=str(devices), TF_CPP_MIN_LOG_LEVEL="2")
  return env


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
  worker = [sys.executable, os.path.join(REPO, "tests", "multihost_worker.py")]
  multi, single = tmp_path / "multi" / "params.npz", tmp_path / "single" / "params.npz"
  multi.parent.mkdir()
  single.parent.mkdir()
  subprocess.run(["bash", LAUNCH, "2", "--", *worker, str(multi)], env=_env(2), check=True, timeout=300)
  subprocess.run(
    worker + [str(single)],
    env={**_env(4), "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"},
    check=True,
    timeout=300,
  )
  a, b = np.load(multi), np.load(single)
  assert sorted(a.files) == sorted(b.files) and len(a.files) > 10
  for name in a.files:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_command_line_runs_as_two_processes(digits_dir, tmp_path):
  workdir = tmp_path / "run"
  command = [
    sys.executable,
    "-m",
    "vitjax.main",
    "--config=configs/quickstart.py",
    f"--workdir={workdir}",
    f"--config.data.data_dir={digits_dir}",
    "--config.total_steps=4",
    "--config.batch_size=16",
    "--config.eval_batch_size=40",
    "--config.log_every=2",
    "--config.eval_every=4",
    "--config.checkpoint_every=2",
  ]
  run = subprocess.run(
    ["bash", LAUNCH, "2", "--", *command], cwd=REPO, env=_env(2), capture_output=True, text=True, timeout=400
  )
  assert run.returncode == 0, run.stdout[-3000:]
  assert "[process 0] Final test accuracy" in run.stdout and "[process 1] Final" not in run.stdout
  with open(workdir / "results.json") as f:
    results = json.load(f)
  assert results["step"] == 4 and results["num_examples"] == 360  # Both processes' eval shares, each once.
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
