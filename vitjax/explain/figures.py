"""The PNGs of `--mode=explain`: every method's map over its image, the attention heads, the class-model images."""

import os
from typing import Any

import numpy as np

from vitjax.evaluate import plots
from vitjax.explain import methods

# Panel titles of the maps, in the order they appear.
TITLES = {
  "gradients": "gradients",
  "smoothgrad": "SmoothGrad",
  "integrated_gradients_black": "IG (black)",
  "integrated_gradients_blur": "IG (blurred)",
  "grad_cam": "Grad-CAM",
  "attention_rollout": "attention rollout",
  "attention_last": "last attention",
  "occlusion": "occlusion",
  "lime": "LIME",
}


def write_image(folder: str, index: int, image: np.ndarray, result: dict[str, Any], title: str) -> list[str]:
  """`image_<index>.png` (the image, then each map over it) and, for a model with attention,
  `attention_heads_<index>.png`; returns the files written."""
  explanation = result["explanation"]
  panels = [(title.split(" | ")[0], image, None, False)]
  for name, heat in explanation.maps.items():
    auc = result["faithfulness"][name]
    label = f"{TITLES.get(name, name)}\ndel {auc['deletion_auc']:.2f} ins {auc['insertion_auc']:.2f}"
    panels.append((label, image, heat, name.startswith(methods.SIGNED)))
  paths = [os.path.join(folder, f"image_{index:03d}.png")]
  plots.plot_image_grid(panels, paths[0], title=title, columns=6)
  if explanation.heads is not None:
    heads = [(f"head {h}", image, heat, False) for h, heat in enumerate(explanation.heads)]
    paths.append(os.path.join(folder, f"attention_heads_{index:03d}.png"))
    plots.plot_image_grid(heads, paths[1], title=f"{title}: last attention per head", columns=6)
  return paths


def write_class_models(folder: str, images: list[tuple[str, np.ndarray]]) -> str:
  """`class_model.png`: each (title, image [H, W, C] in [0, 255]) grown to excite a class or channel."""
  path = os.path.join(folder, "class_model.png")
  panels = [(name, np.clip(np.round(image), 0, 255).astype(np.uint8), None, False) for name, image in images]
  plots.plot_image_grid(panels, path, title="class-model visualisation", columns=5)
  return path
