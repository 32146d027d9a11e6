"""Published timm repos (python -m vitjax.export --format=timm) as timm itself loads them: logits side by side.

    pip install torch timm  # not a requirement of vitjax
    python benchmarks/timm_published.py
    python benchmarks/timm_published.py --models resnet18 convnext_tiny

Each model gets random weights (BatchNorm statistics away from 0 and 1), is written as a timm repo folder by
`vitjax.transfer.publish`, loaded with `timm.create_model("local-dir:FOLDER", pretrained=True)`, and both run on the
same normalised images. One markdown row per model: timm architecture, the largest logit difference relative to the
largest logit. Small variants keep it quick (the model_args in config.json carry their sizes to timm).
"""

import argparse
import os
import sys
import tempfile

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.timm_import import import_timm  # noqa: E402
from vitjax import models  # noqa: E402
from vitjax.transfer import publish  # noqa: E402

VIT = dict(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64)
CASES = {
  "vit_micro4": (dict(VIT, num_registers=2, layerscale=0.1), 16),
  "vit_micro8": (dict(VIT, classifier="gap", qk_norm=True, gelu_approximate=False), 16),
  "vit_s16": (dict(VIT, posemb="sincos2d", classifier="gap"), 32),
  "deit_ti16_distilled": (dict(VIT, patch_size=8), 16),
  "resnet18": ({}, 32),
  "bit_r50x1": ({}, 32),
  "convnext_tiny": (dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)), 32),
  "efficientnet_b0": ({}, 32),
  "mobilenet_v2": ({}, 32),
  "mobilenet_v3_small": ({}, 32),
  "densenet121": ({}, 32),
  "vgg11_bn": ({}, 32),
  "swin_t": (dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4)), 224),
  "mixer_s16": ({}, 224),
  "coatnet_0": ({}, 224),
}


def random_variables(module, size: int):
  shapes = jax.eval_shape(lambda: models.init_variables(module, jax.random.key(0), image_shape=(size, size, 3)))
  rng = np.random.default_rng(0)
  leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
  values = [
    (rng.uniform(0.5, 2.0, x.shape) if jax.tree_util.keystr(path).endswith("['var']") else rng.normal(0, 0.2, x.shape))
    for path, x in leaves
  ]
  return jax.tree.unflatten(tree, [v.astype(np.float32) for v in values])


def compare(name: str, folder: str, timm, torch) -> str:
  options, size = CASES[name]
  module = models.build(name, num_classes=5, **options)
  variables = random_variables(module, size)
  pp_eval = f"resize({size})|value_range(-1, 1)"
  repo = publish.Repo(name, module, variables, [f"c{i}" for i in range(5)], pp_eval, (size, size))
  config = publish.write(repo, folder)
  images = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype(np.float32)
  ours = np.asarray(module.apply(variables, images, train=False))
  model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
  with torch.no_grad():
    theirs = model(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).numpy()
  relative = np.abs(ours - theirs).max() / np.abs(ours).max()
  return f"| {name} | {config['architecture']} | {relative:.1e} |"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
  args = parser.parse_args()
  timm, torch = import_timm()
  print(f"timm {timm.__version__}, torch {torch.__version__}\n\n| model | timm architecture | max rel. logit diff |")
  print("|---|---|---|")
  with tempfile.TemporaryDirectory() as root:
    for name in args.models:
      print(compare(name, os.path.join(root, name), timm, torch), flush=True)


if __name__ == "__main__":
  main()
