"""Faults of a two-process run on 127.0.0.1: a process killed in the middle of a checkpoint save is named by the
survivor, which exits 75 within the configured heartbeat timeout; the half-written checkpoint is not taken, and the
relaunch trains the lost steps again to the same losses; SIGTERM to one process stops both at the same step with a
checkpoint and exit status 0. (A kill between checkpoints and one inside an evaluation: benchmarks/faults.py.)"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEARTBEAT = 3  # Seconds: config.distributed.heartbeat_timeout of these runs.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, digits_dir, logs, fault: str = "") -> list[subprocess.Popen]:
  """Both processes of a run that is long enough (40 steps, constant learning rate) never to end by itself here;
  process 1 with `fault` (tests/fault_worker.py) if given."""
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  processes = []
  for i in range(2):
    entry = ("tests/fault_worker.py", "--nosupervise") if fault and i == 1 else ("-m", "vitjax.main")
    command = [
      *(sys.executable, *entry, "--config=configs/quickstart.py", f"--workdir={workdir}"),
      *(f"--config.data.data_dir={digits_dir}", "--config.total_steps=40", "--config.batch_size=16"),
      *("--config.eval_batch_size=360", "--config.log_every=1", "--config.eval_every=0"),
      *("--config.checkpoint_every=4", "--config.schedule.name=constant", "--config.schedule.warmup_steps=0"),
      f"--config.distributed.heartbeat_timeout={HEARTBEAT}",
      *(f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"),
    ]
    log = open(logs / f"p{i}.log", "w")  # noqa: SIM115 - closed with the process.
    process_env = {**env, "VITJAX_TEST_FAULT": fault} if fault and i == 1 else env
    processes.append(subprocess.Popen(command, cwd=REPO, env=process_env, stdout=log, stderr=subprocess.STDOUT))
  return processes


def _wait_for_checkpoint_after(workdir, step: int, processes) -> int:
  deadline = time.time() + 240
  while time.time() < deadline and all(p.poll() is None for p in processes):
    done = _checkpoints(workdir)
    if any(s > step for s in done):
      return max(done)
    time.sleep(0.05)
  raise AssertionError(f"no checkpoint after step {step}: {[p.poll() for p in processes]}")


def _checkpoints(workdir) -> list[int]:
  """Committed steps (Orbax writes a step into a temporary folder and renames it when complete)."""
  folder = workdir / "checkpoints"
  return [int(name) for name in os.listdir(folder) if name.isdigit()] if folder.exists() else []


def _losses(workdir) -> dict[int, float]:
  with open(workdir / "metrics.jsonl") as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if r["split"] == "train"}


def test_process_lost_in_a_save_is_named_then_relaunch_and_sigterm_resume_exactly(digits_dir, tmp_path):
  workdir = tmp_path / "run"
  first = _start(workdir, digits_dir, tmp_path, fault="save:8")  # Process 1 dies while checkpoint 8 is written.
  assert first[1].wait(timeout=240) == -signal.SIGKILL, (tmp_path / "p1.log").read_text()[-3000:]
  killed = time.time()
  code = first[0].wait(timeout=60)
  detected = time.time() - killed
  log = (tmp_path / "p0.log").read_text()
  assert code == 75, log[-3000:]
  assert HEARTBEAT - 0.5 < detected < 4 * HEARTBEAT, detected
  lines = [line for line in log.splitlines() if "lost process" in line]
  assert len(lines) == 1 and "lost process 1 of 2: no heartbeat for" in lines[0], lines
  assert "Fatal Python error" not in log and "Traceback" not in log
  trained = _losses(workdir)  # Steps after the last checkpoint, which the relaunch trains again.
  assert max(_checkpoints(workdir)) == 4 and max(trained) >= 8  # Checkpoint 8 was never committed.

  second = _start(workdir, digits_dir, tmp_path)
  stop_after = _wait_for_checkpoint_after(workdir, max(trained), second)
  assert "Resumed from step 4." in (tmp_path / "p0.log").read_text()
  second[1].send_signal(signal.SIGTERM)
  assert [p.wait(timeout=120) for p in second] == [0, 0], (tmp_path / "p0.log").read_text()[-3000:]
  with open(workdir / "results.json") as f:
    results = json.load(f)
  assert results["stop_reason"] == "SIGTERM" and results["step"] > stop_after
  assert os.path.isdir(workdir / "checkpoints" / str(results["step"]) / "state")  # Saved at the stop, by both.
  resumed = _losses(workdir)
  assert sorted(resumed) == list(range(1, results["step"] + 1))
  assert {s: resumed[s] for s in trained} == trained  # Bit for bit: the same batches and updates again.
