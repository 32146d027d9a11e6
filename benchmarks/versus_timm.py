"""Train-step throughput of vitjax against PyTorch/timm, side by side on the same CPU cores.

    pip install torch timm  # into the environment of --torch_python (not a requirement of vitjax)
    python benchmarks/versus_timm.py --models resnet50 --image_size 224 --batch_size 16
    python benchmarks/versus_timm.py --models resnet18 --image_size 32 --batch_size 128 --torch_python=/venv/bin/python

Without flags it compares ResNet-50 at 224 (batch 16) and ResNet-18 at 32 (batch 128). Each framework runs in a
worker process of its own (vitjax under this interpreter, timm under `--torch_python`, by default this one too),
both limited to `--threads` threads; the driver compiles both, then alternates timed rounds between them, so slow
drifts of the machine hit both alike, and prints img/s of each, the ratio vitjax/timm per round and its spread.
The train step is the same on both sides: float32 forward in train mode, softmax cross-entropy, backward, SGD
with momentum 0.9. A round is re-timed when other processes used more than `--max_other_share` of the CPUs.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# vitjax registry name -> timm model name, for the families both have.
TIMM_NAMES = {
  "resnet18": "resnet18",
  "resnet34": "resnet34",
  "resnet50": "resnet50",
  "resnet101": "resnet101",
  "efficientnet_b0": "efficientnet_b0",
  "mobilenet_v2": "mobilenetv2_100",
  "mobilenet_v3_large": "mobilenetv3_large_100",
  "convnext_tiny": "convnext_tiny",
  "densenet121": "densenet121",
  "vgg11": "vgg11",
  "vgg16": "vgg16",
  "vit_ti16": "vit_tiny_patch16_224",
  "vit_s16": "vit_small_patch16_224",
  "vit_b16": "vit_base_patch16_224",
}
DEFAULT_RUNS = (("resnet50", 224, 16), ("resnet18", 32, 128))


def vitjax_step(model_name: str, image_size: int, batch_size: int):
  """A no-argument function running one vitjax train step (compiled, state donated) to completion."""
  import jax
  import jax.numpy as jnp
  import optax

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from benchmarks.model_throughput import make_train_step
  from vitjax import models

  model = models.build(model_name, num_classes=1000)
  images = jax.random.uniform(jax.random.key(1), (batch_size, image_size, image_size, 3), jnp.float32, -1, 1)
  labels = jax.random.randint(jax.random.key(2), (batch_size,), 0, 1000)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images)
  optimizer = optax.sgd(0.01, momentum=0.9)
  state = [variables["params"], variables.get("batch_stats", {}), optimizer.init(variables["params"])]
  rng = jax.random.key(3)
  train_step = make_train_step(model, optimizer).lower(*state, images, labels, rng).compile()

  def run():
    state[0], state[1], state[2], loss = train_step(*state, images, labels, rng)
    loss.block_until_ready()

  return run


def timm_step(model_name: str, image_size: int, batch_size: int):
  """A no-argument function running one timm train step with the same recipe as `vitjax_step`."""
  import timm
  import torch

  torch.manual_seed(0)
  # Only the ViTs take the input size as an argument; the convolutional nets accept any size.
  size_args = {"img_size": image_size} if model_name.startswith("vit") else {}
  model = timm.create_model(TIMM_NAMES[model_name], pretrained=False, num_classes=1000, **size_args)
  model.train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  images = torch.rand(batch_size, 3, image_size, image_size) * 2 - 1
  labels = torch.randint(0, 1000, (batch_size,))

  def run():
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()

  return run


def serve(framework: str, model_name: str, image_size: int, batch_size: int, threads: int) -> None:
  """Worker loop: build and warm up, say `ready`, then answer each line `N` with the median seconds of N steps."""
  if framework == "timm":
    import torch

    torch.set_num_threads(threads)
    step = timm_step(model_name, image_size, batch_size)
  else:
    step = vitjax_step(model_name, image_size, batch_size)
  step()
  step()
  print(json.dumps({"ready": True}), flush=True)
  for line in sys.stdin:
    times = []
    for _ in range(int(line)):
      t0 = time.perf_counter()
      step()
      times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": statistics.median(times)}), flush=True)


def process_ticks(pid: int) -> int:
  """User + system CPU ticks of process `pid` so far, from Linux /proc."""
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return int(fields[11]) + int(fields[12])


def system_ticks() -> tuple[int, int]:
  """(busy ticks of all CPUs, all ticks) so far, from Linux /proc."""
  with open("/proc/stat") as f:
    ticks = [int(t) for t in f.readline().split()[1:]]
  return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def start_worker(python: str, framework: str, run: tuple[str, int, int], threads: int) -> subprocess.Popen:
  """A worker process of `framework` for `run`, limited to `threads` threads, once it reported ready."""
  model_name, image_size, batch_size = run
  env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
  args = [os.path.abspath(__file__), f"--worker={framework}", f"--models={model_name}"]
  args += [f"--image_size={image_size}", f"--batch_size={batch_size}", f"--threads={threads}"]
  worker = subprocess.Popen([python, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
  line = worker.stdout.readline()
  if not line:
    raise RuntimeError(f"the {framework} worker for {model_name} exited during start-up (see its stderr above)")
  return worker


def timed_round(worker: subprocess.Popen, *, steps: int, max_other_share: float, patience_s: float) -> tuple:
  """Median seconds per step of one round of `worker`, re-timed while other processes were busy; and their share."""
  deadline = time.monotonic() + patience_s
  while True:
    busy0, total0 = system_ticks()
    time.sleep(2.0)
    busy1, total1 = system_ticks()
    if (busy1 - busy0) / max(total1 - total0, 1) > max_other_share and time.monotonic() < deadline:
      continue
    busy0, total0 = system_ticks()
    own0 = process_ticks(worker.pid) + process_ticks(os.getpid())
    worker.stdin.write(f"{steps}\n")
    worker.stdin.flush()
    seconds = json.loads(worker.stdout.readline())["seconds"]
    busy1, total1 = system_ticks()
    own1 = process_ticks(worker.pid) + process_ticks(os.getpid())
    share = max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(total1 - total0, 1))
    if share <= max_other_share or time.monotonic() >= deadline:
      return seconds, share


def compare(run: tuple[str, int, int], args: argparse.Namespace) -> dict:
  """Alternating rounds of vitjax and timm on one (model, image size, batch size); img/s and ratio per round."""
  workers = {
    "vitjax": start_worker(sys.executable, "vitjax", run, args.threads),
    "timm": start_worker(args.torch_python, "timm", run, args.threads),
  }
  rounds = []
  try:
    for r in range(args.rounds):
      order = ("vitjax", "timm") if r % 2 == 0 else ("timm", "vitjax")
      timed = {
        name: timed_round(
          workers[name], steps=args.steps, max_other_share=args.max_other_share, patience_s=args.patience
        )
        for name in order
      }
      rounds.append({name: (run[2] / seconds, share) for name, (seconds, share) in timed.items()})
  finally:
    for worker in workers.values():
      worker.stdin.close()
      worker.wait()
  ratios = [r["vitjax"][0] / r["timm"][0] for r in rounds]
  return dict(
    model=run[0],
    image_size=run[1],
    batch_size=run[2],
    vitjax_images_per_s=round(statistics.median(r["vitjax"][0] for r in rounds), 2),
    timm_images_per_s=round(statistics.median(r["timm"][0] for r in rounds), 2),
    ratio=round(statistics.median(ratios), 3),
    ratio_min=round(min(ratios), 3),
    ratio_max=round(max(ratios), 3),
    other_processes_cpu_share=round(max(s for r in rounds for _, s in r.values()), 3),
  )


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="", help=f"comma-separated vitjax names, of: {', '.join(TIMM_NAMES)}")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--torch_python", default=sys.executable, help="python with torch and timm installed")
  parser.add_argument("--threads", type=int, default=2, help="threads of each framework")
  parser.add_argument("--rounds", type=int, default=4, help="alternating timed rounds per framework")
  parser.add_argument("--steps", type=int, default=5, help="train steps per round (median taken)")
  parser.add_argument("--max_other_share", type=float, default=0.05, help="re-time when others used more CPU")
  parser.add_argument("--patience", type=float, default=300.0, help="seconds to wait for an idle machine per round")
  parser.add_argument("--worker", choices=["vitjax", "timm"], help=argparse.SUPPRESS)
  return parser.parse_args()


def main() -> None:
  args = parse_args()
  if args.worker:
    serve(args.worker, args.models, args.image_size, args.batch_size, args.threads)
    return
  runs = [(name, args.image_size, args.batch_size) for name in args.models.split(",") if name] or DEFAULT_RUNS
  unknown = [name for name, _, _ in runs if name not in TIMM_NAMES]
  if unknown:
    raise SystemExit(f"--models: no timm counterpart known for {', '.join(unknown)}; add it to TIMM_NAMES")
  for run in runs:
    print(json.dumps(compare(run, args)), flush=True)


if __name__ == "__main__":
  main()
