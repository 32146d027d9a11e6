"""A fitted baseline on disk and its predictions for new images.

The file is skops (`baseline/model.skops` in the workdir): the whole `Pipeline` (features, standardisation,
classifier) with the class names and the image preparation it was fitted with. Loading trusts only the types of
scikit-learn and of this package, so a file that would run anything else is refused instead of executed.
"""

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import pipeline
from skops import io as skops_io

from vitjax.classical import images as images_lib

DIRECTORY = "baseline"  # Beside a run's own files in the workdir: the baseline never overwrites them.
MODEL_FILE = "model.skops"
MODEL_PATH = f"{DIRECTORY}/{MODEL_FILE}"  # In the workdir.
_TRUSTED_MODULES = ("sklearn.", "vitjax.classical.")


def save(
  path: str,
  fitted: pipeline.Pipeline,
  *,
  class_names: Sequence[str],
  pp_eval: str,
  image_size: int,
  feature: str,
  classifier: str,
) -> None:
  """Writes the pipeline and what `predict` needs to prepare new images exactly as the training ones."""
  bundle = {
    "pipeline": fitted,
    "class_names": list(class_names),
    "pp_eval": pp_eval,
    "image_size": int(image_size),
    "feature": feature,
    "classifier": classifier,
  }
  skops_io.dump(bundle, path)


def load(path: str) -> dict[str, Any]:
  """The bundle `save` wrote, at `path` or in the workdir `path`; types from elsewhere are refused."""
  if os.path.isdir(path):
    path = os.path.join(path, MODEL_PATH)
  trusted = [name for name in skops_io.get_untrusted_types(file=path) if name.startswith(_TRUSTED_MODULES)]
  return skops_io.load(path, trusted=trusted)


def predict(model: dict[str, Any] | str, images: Sequence[str | np.ndarray]) -> list[str]:
  """The class name of each image: image file paths or decoded uint8 arrays, (H, W) or (H, W, C), any size
  (they go through the eval preprocessing and resize the model was fitted with). `model`: a loaded bundle, a
  `model.skops` file or a workdir."""
  bundle = load(model) if isinstance(model, str) else model
  if not len(images):
    return []
  pixels = images_lib.load(images, bundle["pp_eval"], bundle["image_size"])
  return [bundle["class_names"][int(label)] for label in bundle["pipeline"].predict(pixels)]
