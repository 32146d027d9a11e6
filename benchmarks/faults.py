"""Faults of a multi-process run on 127.0.0.1, measured against the same run uninterrupted (benchmarks/RESULTS.md).

    python benchmarks/faults.py [--steps=40] [--heartbeat=10] [--processes=2] [--faults=...] [--workdir=DIR]

Runs the quickstart model on the embedded digits as N processes x 2 simulated CPU devices (constant learning rate,
a checkpoint every 4 steps, one eval at the end): once straight through, then once per fault, relaunched after it
to the end: process 1 SIGKILLed between checkpoints (kill1), the same with process 0, the coordinator (kill0),
process 1 killed in the middle of the save of checkpoint 8 (save) or at the start of the final evaluation (eval),
both from inside (tests/fault_worker.py), and process 1 sent SIGTERM (term). Prints a Markdown table: how long the
other processes took to exit after the fault, with what status and line, the steps trained again, and whether the
relaunched run's per-step losses and final eval equal the straight run's bit for bit.
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


FAULTS = {  # name: (victim, signal sent by this script or None, fault injected by tests/fault_worker.py)
  "kill1": (1, signal.SIGKILL, ""),
  "kill0": (0, signal.SIGKILL, ""),
  "save": (1, None, "save:8"),
  "eval": (1, None, "eval:1"),
  "term": (1, signal.SIGTERM, ""),
}


def start(workdir: str, data_dir: str, args, fault: str = "") -> list[subprocess.Popen]:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  processes = []
  for i in range(args.processes):
    entry = ("tests/fault_worker.py", "--nosupervise") if fault and i == 1 else ("-m", "vitjax.main")
    command = [
      *(sys.executable, *entry, "--config=configs/quickstart.py", f"--workdir={workdir}"),
      *(f"--config.data.data_dir={data_dir}", f"--config.total_steps={args.steps}", "--config.batch_size=16"),
      *("--config.eval_batch_size=360", "--config.log_every=1", "--config.eval_every=0"),
      *("--config.checkpoint_every=4", "--config.schedule.name=constant", "--config.schedule.warmup_steps=0"),
      f"--config.distributed.heartbeat_timeout={args.heartbeat:g}",
      *(f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={args.processes}", f"--process_id={i}"),
    ]
    log = open(f"{workdir}.p{i}.log", "a")  # noqa: SIM115 - closed with the process.
    process_env = {**env, "VITJAX_TEST_FAULT": fault} if fault and i == 1 else env
    processes.append(subprocess.Popen(command, cwd=REPO, env=process_env, stdout=log, stderr=subprocess.STDOUT))
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


def fault(workdir: str, args, name: str) -> dict:
  """Starts the run with fault `name` (FAULTS): a signal to the victim once a step after the second checkpoint is
  logged, or one the victim injects itself; times the others' exits from the victim's end, then relaunches."""
  victim, sig, injected = FAULTS[name]
  processes = start(workdir, args.data_dir, args, injected)
  if sig is not None:
    while not (len(committed(workdir)) >= 2 and max(losses(workdir), default=0) > committed(workdir)[-1]):
      time.sleep(0.02)
    processes[victim].send_signal(sig)
  if sig is None or sig == signal.SIGKILL:
    processes[victim].wait()
  sent = time.time()
  others = [p for i, p in enumerate(processes) if i != victim]
  codes, seconds = [], []
  for p in others:
    codes.append(p.wait())
    seconds.append(time.time() - sent)
  processes[victim].wait()
  trained, last = max(losses(workdir)), max(committed(workdir))
  witness = 1 if victim == 0 else 0
  with open(f"{workdir}.p{witness}.log") as f:
    lines = [line.strip() for line in f if "lost process" in line or "Stopped at step" in line]
  for p in start(workdir, args.data_dir, args):
    p.wait()
  line = lines[-1] if lines else ""
  return dict(seconds=max(seconds), codes=codes, line=line, lost=trained - last, stop=trained, last=last)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--heartbeat", type=float, default=10)
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--faults", default=",".join(FAULTS), help=f"Comma-separated, of {', '.join(FAULTS)}.")
  parser.add_argument("--workdir", default="/tmp/vitjax-faults")
  args = parser.parse_args()
  shutil.rmtree(args.workdir, ignore_errors=True)
  os.makedirs(args.workdir)
  sys.path.insert(0, REPO)
  from vitjax import data

  args.data_dir = os.path.join(args.workdir, "tfds")
  data.prepare(data.builder_by_name("vitjax_digits", data_dir=args.data_dir))
  straight = os.path.join(args.workdir, "straight")
  for p in start(straight, args.data_dir, args):
    p.wait()
  reference = results(straight)
  print(f"straight: accuracy {reference['accuracy']:.6f}, loss {reference['loss']:.7f} at step {reference['step']}")
  print(f"{args.processes} processes")
  print("| fault | the others exit after | status | last checkpoint | steps trained again | relaunch = straight |")
  print("|---|---|---|---|---|---|")
  for name in args.faults.split(","):
    workdir = os.path.join(args.workdir, name)
    row = fault(workdir, args, name)
    final = results(workdir)
    same = losses(workdir) == losses(straight) and all(final[k] == reference[k] for k in ("accuracy", "loss", "step"))
    print(
      f"| {name} at step {row['stop']} | {row['seconds']:.1f} s | {row['codes']} | {row['last']} | {row['lost']} "
      f"| {same} |"
    )
    print(f"  {row['line'][:300]}")


if __name__ == "__main__":
  main()
