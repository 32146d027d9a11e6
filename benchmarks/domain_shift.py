"""Source-only against DANN against self-supervised pre-training then fine-tuning, on synthetic digits shifts.

    python benchmarks/domain_shift.py --shifts=rotated,noised --seeds=0,1,2 --steps=600 --workdir=/tmp/shift

Every run is configs/adapt_digits.py with the same step budget: `--methods` (source_only, dann) train once; each
self-supervised objective (`--ssl`, default rotation, simclr and mae) pre-trains on source and target images for
`--steps` steps and is then fine-tuned with `source_only` from its workdir for `--steps` more. The table gives the
accuracy on the 360 shifted test digits (labels never train) as mean +- standard deviation over the seeds, and the
clean test accuracy beside it. A second table scores every pre-trained encoder, and a randomly initialised one, by
k-NN (k=20) and a 10-shot ridge probe on its pre-logits features (clean digits, eval preprocessing).
"""

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vitjax import use_xla_cpu_emitters  # noqa: E402

use_xla_cpu_emitters()  # As the command-line entry points do; before the first JAX computation.

import jax  # noqa: E402

from configs import adapt_digits  # noqa: E402
from vitjax import data, losses, models, sharding  # noqa: E402
from vitjax.evaluate import registry  # noqa: E402
from vitjax.train import loop  # noqa: E402


def model_name(args, objective: str) -> str:
  """The model an objective trains: `--model`, else the config's (MAE and rotation train a ViT of smaller patches)."""
  return args.model or adapt_digits.get_config(f"rotated,{objective}").model.name


def _config(args, shift: str, objective: str, *, seed: int, model: str, pretrained: str | None = None):
  config = adapt_digits.get_config(f"{shift},{objective}")
  config.seed, config.total_steps = seed, args.steps
  config.eval_every = config.checkpoint_every = args.steps
  config.schedule.warmup_steps = min(config.schedule.warmup_steps, args.steps // 10)
  config.data.data_dir = args.data_dir
  config.model.name = model
  if args.domain_weight is not None:
    config.adapt.domain_weight = args.domain_weight
  if pretrained:
    config.pretrained.path = pretrained
  return config


def _one(args, shift: str, seed: int, objective: str, name: str, model: str, pretrained: str | None = None) -> dict:
  config = _config(args, shift, objective, seed=seed, model=model, pretrained=pretrained)
  return _run(config, os.path.join(args.workdir, f"{shift}_{name}_{seed}"))


def _run(config, workdir: str) -> dict:
  """The run's final results (reused when its workdir already finished)."""
  path = os.path.join(workdir, "results.json")
  if os.path.exists(path):
    with open(path) as f:
      results = json.load(f)
    if results.get("finished"):
      return results
  return loop.train_and_evaluate(config, workdir)


def random_encoder_probes(config, seed: int) -> dict[str, float]:
  """k-NN and few-shot probe accuracies of the untrained model of `config` (the floor SSL must beat)."""
  source, target = data.from_config(config.data), data.target_from_config(config.data)
  for each in (source, target):
    data.prepare(each)
  model = models.from_config(config.model, num_classes=data.num_classes(source))
  mesh, loss_fn = sharding.mesh_from_config(config), losses.from_config(config.loss)
  setting = registry.Setting(config, model, source, target, loss_fn, mesh, data.class_names(source))
  probes = [entry for entry in registry.from_config(config, setting) if entry.type in ("fewshot", "knn")]
  shape = tuple(setting.dataset("source", config.data.eval_split).element_spec["image"].shape[1:])
  variables = models.init_variables(model, jax.random.key(seed), image_shape=shape)
  return registry.evaluate(probes, registry.Weights(members=(variables,)))


def _spread(values: list[float]) -> str:
  deviation = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{100 * statistics.mean(values):.1f} +- {100 * deviation:.1f}"


def measure(args) -> tuple[dict, dict]:
  """({(shift, method): [results per seed]}, {(shift, encoder): [probe results per seed]})."""
  accuracy, probes = {}, {}
  for shift in args.shifts:
    for seed in args.seeds:
      for method in args.methods:
        runs = accuracy.setdefault((shift, method), [])
        runs.append(_one(args, shift, seed, method, method, model_name(args, method)))
      for ssl in args.ssl:
        model = model_name(args, ssl)
        probes.setdefault((shift, f"{ssl} ({model})"), []).append(_one(args, shift, seed, ssl, ssl, model))
        pretrained = os.path.join(args.workdir, f"{shift}_{ssl}_{seed}")
        finetuned = _one(args, shift, seed, "source_only", f"{ssl}_ft", model, pretrained=pretrained)
        accuracy.setdefault((shift, f"{ssl} + fine-tune ({model})"), []).append(finetuned)
      for model in sorted({model_name(args, ssl) for ssl in args.ssl}):
        config = _config(args, shift, "rotation", seed=seed, model=model)
        probes.setdefault((shift, f"random init ({model})"), []).append(random_encoder_probes(config, seed))
  return accuracy, probes


def tables(accuracy: dict, probes: dict) -> str:
  lines = ["| shift | method | target accuracy % | clean accuracy % |", "|---|---|---|---|"]
  for (shift, method), runs in accuracy.items():
    target, clean = [r["target_accuracy"] for r in runs], [r["accuracy"] for r in runs]
    lines.append(f"| {shift} | {method} | {_spread(target)} | {_spread(clean)} |")
  lines += ["", "| shift | encoder | k-NN (k=20) % | 10-shot ridge probe % |", "|---|---|---|---|"]
  for (shift, encoder), runs in probes.items():
    knn, probe = [r["knn_20"] for r in runs], [r["fewshot_10shot"] for r in runs]
    lines.append(f"| {shift} | {encoder} | {_spread(knn)} | {_spread(probe)} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shifts", default="rotated,noised", type=lambda s: s.split(","))
  parser.add_argument("--methods", default="source_only,dann", type=lambda s: [x for x in s.split(",") if x])
  parser.add_argument("--ssl", default="rotation,simclr,mae", type=lambda s: [x for x in s.split(",") if x])
  parser.add_argument("--seeds", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
  parser.add_argument("--steps", default=600, type=int)
  parser.add_argument("--workdir", default="/tmp/domain_shift")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--model", default="", help="One model for every run instead of the config's.")
  parser.add_argument("--domain_weight", default=None, type=float, help="DANN's config.adapt.domain_weight.")
  args = parser.parse_args()
  accuracy, probes = measure(args)
  table = tables(accuracy, probes)
  print(table)
  with open(os.path.join(args.workdir, "domain_shift.md"), "w") as f:
    f.write(table + "\n")


if __name__ == "__main__":
  main()
