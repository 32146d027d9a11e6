"""timm's NaFlex ViTs against vitjax's on non-square images at several sequence lengths: logits side by side.

    pip install torch timm  # into the environment of --torch_python (not a requirement of vitjax)
    python benchmarks/naflex_timm.py --torch_python=/venv-with-timm/bin/python
    python benchmarks/naflex_timm.py --models naflexvit_base_patch16_gap --seq_lens 128 576

A worker under `--torch_python` builds each timm model with random weights (layer scales, norms and position tables
away from their initial values, so each of them shows in the logits), saves its `state_dict()` as safetensors,
resizes random images of several aspect ratios as timm's NaFlex transforms do (`get_image_size_for_seq`, then an
antialiased bicubic resize), patchifies them with `patchify_image`, pads each batch to the sequence length and runs
`model(patches, patch_coord=..., patch_valid=...)`. vitjax then loads the same file through its timm converter and
runs the same padded patches. One markdown row per model and sequence length: the max abs logit difference and the
largest logit. Large models run with `depth` cut to 2 (`SHALLOW`), the others as timm defines them.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

MODELS = (
  "naflexvit_base_patch16_gap",
  "naflexvit_base_patch16_par_gap",
  "naflexvit_base_patch16_parfac_gap",
  "naflexvit_base_patch16_map",
  "naflexvit_so150m2_patch16_reg1_gap",
  "naflexvit_so150m2_patch16_reg1_map",
  "naflexvit_base_patch16_siglip",
  "naflexvit_so400m_patch16_siglip",
)
SHALLOW = {
  "naflexvit_so150m2_patch16_reg1_gap",
  "naflexvit_so150m2_patch16_reg1_map",
  "naflexvit_so400m_patch16_siglip",
}
# (height, width) of the random images: wide, tall, square-ish and a thin strip.
IMAGE_SIZES = ((120, 300), (400, 130), (210, 190), (40, 500))
CLASSES = 10


def randomize(model, torch) -> None:
  """Random weights in which every parameter matters: matrices N(0, 0.02), norms' scales around 1, layer scales
  0.1-0.5, position tables and tokens N(0, 0.5)."""
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      if name.endswith("gamma"):
        param.copy_(0.1 + 0.4 * torch.rand(param.shape, generator=generator))
      elif "norm" in name and name.endswith("weight"):
        param.copy_(1 + 0.1 * noise)
      elif "pos_embed" in name or "token" in name or "latent" in name:
        param.copy_(0.5 * noise)
      else:
        param.copy_(0.02 * noise)


def timm_batch(images, seq_len: int, patch: int, timm, torch) -> dict:
  """timm's NaFlex input for `images` (float CHW arrays in [-1, 1]), each padded to `seq_len` patches."""
  from timm.data.naflex_transforms import get_image_size_for_seq, patchify_image  # noqa: PLC0415

  out = {"patches": [], "patch_coord": [], "patch_valid": []}
  for image in images:
    _, size = get_image_size_for_seq(image.shape[1:], patch, seq_len)
    resized = torch.nn.functional.interpolate(
      torch.from_numpy(image)[None], size=size, mode="bicubic", antialias=True, align_corners=False
    )[0]
    patches, coord, valid = patchify_image(resized, (patch, patch))
    pad = seq_len - len(patches)
    out["patches"].append(torch.nn.functional.pad(patches, (0, 0, 0, pad)))
    out["patch_coord"].append(torch.nn.functional.pad(coord, (0, 0, 0, pad)))
    out["patch_valid"].append(torch.nn.functional.pad(valid, (0, pad)))
  return {k: torch.stack(v) for k, v in out.items()}


def worker(folder: str, names: list[str], seq_lens: list[int]) -> None:
  """Under --torch_python: for each model, `NAME.safetensors`, and `NAME_S.npz` with the inputs and logits."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from timm_import import import_timm  # noqa: PLC0415  Standard library only: the torch Python has no JAX.

  timm, torch = import_timm()
  import safetensors.torch  # noqa: PLC0415

  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  images = [rng.uniform(-1, 1, (3, h, w)).astype(np.float32) for h, w in IMAGE_SIZES]
  for name in names:
    model = timm.create_model(name, num_classes=CLASSES, **({"depth": 2} if name in SHALLOW else {})).eval()
    randomize(model, torch)
    safetensors.torch.save_file(model.state_dict(), os.path.join(folder, f"{name}.safetensors"))
    for seq_len in seq_lens:
      batch = timm_batch(images, seq_len, model.embeds.patch_size[0], timm, torch)
      with torch.no_grad():
        logits = model(batch["patches"], patch_coord=batch["patch_coord"], patch_valid=batch["patch_valid"])
      arrays = {k: v.numpy() for k, v in batch.items()}
      np.savez(os.path.join(folder, f"{name}_{seq_len}.npz"), logits=logits.numpy(), **arrays)
  print(json.dumps({"timm": timm.__version__, "torch": torch.__version__}))


def compare(folder: str, name: str, seq_lens: list[int]) -> list[str]:
  """vitjax's logits on the worker's inputs, from the worker's safetensors: one markdown row per sequence length."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from vitjax import models, transfer  # noqa: PLC0415

  model = models.build(name, num_classes=CLASSES, **({"num_layers": 2} if name in SHALLOW else {}))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  variables, _ = transfer.load_variables(os.path.join(folder, f"{name}.safetensors"), shapes)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  rows = []
  for seq_len in seq_lens:
    data = dict(np.load(os.path.join(folder, f"{name}_{seq_len}.npz")))
    theirs = data.pop("logits")
    ours = np.asarray(forward(variables, data))
    grids = ", ".join(
      f"{h}x{w}" for h, w in (c[v].max(0) + 1 for c, v in zip(data["patch_coord"], data["patch_valid"]))
    )
    diff, scale = np.abs(ours - theirs).max(), np.abs(theirs).max()
    rows.append(f"| {name}{' (depth 2)' if name in SHALLOW else ''} | {seq_len} | {grids} | {diff:.1e} | {scale:.2f} |")
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
  parser.add_argument("--seq_lens", nargs="+", type=int, default=[128, 256])
  parser.add_argument("--torch_python", default=sys.executable, help="python with torch and timm installed")
  parser.add_argument("--worker_dir", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker_dir:
    return worker(args.worker_dir, args.models, args.seq_lens)
  with tempfile.TemporaryDirectory() as folder:
    command = [args.torch_python, os.path.abspath(__file__), f"--worker_dir={folder}", "--models", *args.models]
    versions = json.loads(
      subprocess.run(
        [*command, "--seq_lens", *map(str, args.seq_lens)], check=True, capture_output=True, text=True
      ).stdout.splitlines()[-1]
    )
    print(f"timm {versions['timm']}, torch {versions['torch']}; images (h, w): {IMAGE_SIZES}\n")
    print("| model | seq len | patch grids (h, w) | max abs logit diff | max abs logit |\n|---|---|---|---|---|")
    for name in args.models:
      print("\n".join(compare(folder, name, args.seq_lens)), flush=True)


if __name__ == "__main__":
  main()
