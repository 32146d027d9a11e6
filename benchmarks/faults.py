"""Faults of a two-process run on 127.0.0.1, measured against the same run uninterrupted (benchmarks/RESULTS.md).

    python benchmarks/faults.py [--steps=40] [--heartbeat=10] [--workdir=/tmp/vitjax-faults]

Runs the quickstart model on the embedded digits as 2 processes x 2 simulated CPU devices (constant learning rate,
a checkpoint every 4 steps, one eval at the end): once straight through; once with process 1 SIGKILLed between
checkpoints, then relaunched; the same with process 0 (the coordinator); once with process 1 sent SIGTERM, then
relaunched. Prints a Markdown table: how long the other process took to exit after the fault, with what status and
line, the steps trained again, and whether the relaunched run's per-step losses and final eval equal the straight
run's bit for bit.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(workdir: str, data_dir: str, steps: int, heartbeat: float) -> list[subprocess.Popen]:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  processes = []
  for i in range(2):
    command = [
      *(sys.executable, "-m", "vitjax.main", "--config=configs/quickstart.py", f"--workdir={workdir}"),
      *(f"--config.data.data_dir={data_dir}", f"--config.total_steps={steps}", "--config.batch_size=16"),
      *("--config.eval_batch_size=360", "--config.log_every=1", "--config.eval_every=0"),
      *("--config.checkpoint_every=4", "--config.schedule.name=constant", "--config.schedule.warmup_steps=0"),
      f"--config.distributed.heartbeat_timeout={heartbeat}",
      *(f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"),
    ]
    log = open(f"{workdir}.p{i}.log", "a")  # noqa: SIM115 - closed with the process.
    processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  return processes


def committed(workdir: str) -> list[int]:
  folder = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def losses(workdir: str) -> dict[int, float]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if r["split"] == "train"}


def results(workdir: str) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def fault(workdir: str, args, victim: int, sig: signal.Signals) -> dict:
  """Starts the run, sends `sig` to process `victim` once a step after the second checkpoint is logged, times the
  other's exit, then relaunches to the end."""
  processes = start(workdir, args.data_dir, args.steps, args.heartbeat)
  while not (len(committed(workdir)) >= 2 and max(losses(workdir), default=0) > committed(workdir)[-1]):
    time.sleep(0.02)
  processes[victim].send_signal(sig)
  sent = time.time()
  code = processes[1 - victim].wait()
  seconds = time.time() - sent
  processes[victim].wait()
  trained, last = max(losses(workdir)), max(committed(workdir))
  with open(f"{workdir}.p{1 - victim}.log") as f:
    lines = [line.strip() for line in f if "lost process" in line or "Stopped at step" in line]
  for p in start(workdir, args.data_dir, args.steps, args.heartbeat):
    p.wait()
  return dict(seconds=seconds, code=code, line=lines[-1] if lines else "", lost=trained - last, stop=trained)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--heartbeat", type=float, default=10)
  parser.add_argument("--workdir", default="/tmp/vitjax-faults")
  args = parser.parse_args()
  shutil.rmtree(args.workdir, ignore_errors=True)
  os.makedirs(args.workdir)
  sys.path.insert(0, REPO)
  from vitjax import data

  args.data_dir = os.path.join(args.workdir, "tfds")
  data.prepare(data.builder_by_name("vitjax_digits", data_dir=args.data_dir))
  straight = os.path.join(args.workdir, "straight")
  for p in start(straight, args.data_dir, args.steps, args.heartbeat):
    p.wait()
  reference = results(straight)
  print(f"straight: accuracy {reference['accuracy']:.6f}, loss {reference['loss']:.7f} at step {reference['step']}")
  print("| fault | the other process exits after | status | steps trained again | relaunch = straight |")
  print("|---|---|---|---|---|")
  for victim, sig in ((1, signal.SIGKILL), (0, signal.SIGKILL), (1, signal.SIGTERM)):
    name = f"{sig.name} process {victim}"
    workdir = os.path.join(args.workdir, name.replace(" ", "_").lower())
    row = fault(workdir, args, victim, sig)
    final = results(workdir)
    same = losses(workdir) == losses(straight) and all(final[k] == reference[k] for k in ("accuracy", "loss", "step"))
    print(f"| {name} at step {row['stop']} | {row['seconds']:.1f} s | {row['code']} | {row['lost']} | {same} |")
    print(f"  process {1 - victim}: {row['line'][:300]}")


if __name__ == "__main__":
  main()
