"""`--mode=explain`: attribution maps of a trained run's predictions, their faithfulness, and class-model images.

For each chosen image (`config.explain.files`, else the first `num_images` of `data.eval_split`) and its predicted
class: a PNG grid of every method's map over the image (`workdir/explain/image_<i>.png`, the attention heads
beside it), and in `workdir/explain.json` per method its deletion and insertion AUC against a random ranking's
(and for integrated gradients its completeness error); `class_model.png` holds the class-model images.
"""

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from vitjax import data
from vitjax.deploy.classifier import Classifier
from vitjax.deploy.inputs import find_files
from vitjax.errors import ConfigError
from vitjax.explain import faithfulness, figures, gradcam, methods, visualize
from vitjax.explain.scorer import Scorer

RANDOM = "random"  # The reference ranking of the faithfulness curves.


def explain_images(
  classifier: Classifier, images: np.ndarray, options: ml_collections.ConfigDict, *, seed: int = 0
) -> list[dict[str, Any]]:
  """Per host-preprocessed image [N, H, W, C] (uint8), the maps of `options.methods` for its predicted class and
  their faithfulness: dicts with `label`, `probability`, `explanation` (methods.Explanation), `faithfulness`
  ({method: {deletion_auc, insertion_auc}}, `random` included) and the Grad-CAM `layer`."""
  methods.check_options(options)
  scorer = Scorer.from_classifier(classifier)
  image_shape = images.shape[1:]
  wanted, missing = methods.applicable(scorer, tuple(options.methods), image_shape)
  if missing:
    logging.warning("Skipped %s: the model has no attention.", ", ".join(missing))
  wanted = tuple(m for m in wanted if m != "class_model")
  layer = options.layer or (gradcam.default_layer(scorer, image_shape) if "grad_cam" in wanted else "")
  # The images are already host-preprocessed: the scorer applies only the normalisation (predict would redo all).
  probabilities = np.asarray(jax.jit(Scorer.probabilities)(scorer, jnp.asarray(images, jnp.float32)))
  results = []
  for i, (image, row) in enumerate(zip(images, probabilities)):
    key = jax.random.fold_in(jax.random.key(seed), i)
    label = int(np.argmax(row))
    explanation = methods.attribute(scorer, image, label, key, options, methods=wanted, layer=layer)
    scores = _faithfulness(scorer, image, label, explanation.maps, options, jax.random.fold_in(key, 1))
    results.append(
      {"label": label, "probability": float(row[label]), "explanation": explanation, "faithfulness": scores}
    )
  return [{**result, "layer": layer} for result in results]


def _faithfulness(scorer, image, label, maps, options, key) -> dict[str, dict[str, float]]:
  """Deletion and insertion AUC of every map and of a random one, in one jitted call."""
  names = [*maps, RANDOM]
  random_map = jax.random.uniform(jax.random.fold_in(key, 0), image.shape[:2])
  stacked = jnp.stack([*(jnp.asarray(maps[name]) for name in maps), random_map])
  areas = faithfulness.deletion_insertion(
    scorer,
    jnp.asarray(image, jnp.float32),
    label,
    stacked,
    jax.random.fold_in(key, 1),
    steps=options.faithfulness.steps,
    blur_sigma=methods.blur_sigma(options, image.shape),
    batch_size=options.batch_size,
  )
  return {name: {"deletion_auc": float(d), "insertion_auc": float(i)} for name, (d, i) in zip(names, np.asarray(areas))}


def _chosen_images(config: ml_collections.ConfigDict, classifier: Classifier) -> tuple[np.ndarray, list, list]:
  """(host-preprocessed images, where each came from, its true class index or None) of config.explain."""
  options = config.explain
  if options.files:
    paths = [path for pattern in options.files for path in find_files(pattern)]
    return np.stack([classifier.preprocessing.file(path) for path in paths]), paths, [None] * len(paths)
  if options.num_images < 1:
    raise ConfigError(
      f"config.explain.num_images must be at least 1 (or set config.explain.files), got {options.num_images}."
    )
  data_config = data.at_seq_len(config.data).copy_and_resolve_references()  # NaFlex: the spec is at its length.
  data_config.pp_eval = classifier.preprocessing.host_spec
  dataset = data.eval_dataset(data.from_config(data_config), data_config, batch_size=options.num_images)
  batch = next(data.as_numpy(dataset))
  keep = batch["mask"] > 0
  images = np.clip(np.round(batch["image"][keep]), 0, 255).astype(np.uint8)
  labels = [int(label) for label in batch["labels"][keep].argmax(-1)]
  return images, [f"{data_config.eval_split}[{i}]" for i in range(len(images))], labels


def _record(source: str, true: int | None, result: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
  """One image's entry of explain.json: where it came from, the classes, each method's scores."""
  scores = {name: dict(values) for name, values in result["faithfulness"].items()}
  for name, error in result["explanation"].completeness.items():
    scores[name]["completeness_error"] = error
  return {
    "source": source,
    "true_class": None if true is None else class_names[true],
    "predicted_class": class_names[result["label"]],
    "probability": result["probability"],
    "methods": scores,
  }


def _summary(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
  """Per method the mean of each score over the images (and the largest completeness error)."""
  summary = {}
  for name in records[0]["methods"]:
    rows = [record["methods"][name] for record in records]
    summary[name] = {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
    if "completeness_error" in rows[0]:
      summary[name]["max_completeness_error"] = float(max(row["completeness_error"] for row in rows))
  return summary


def _table(summary: dict[str, dict[str, float]], count: int) -> str:
  """The summary as the text table the mode prints."""
  lines = [f"Faithfulness over {count} images (deletion AUC: lower is better; insertion AUC: higher is better)"]
  lines.append(f"{'method':<28} {'deletion':>9} {'insertion':>9} {'IG completeness error':>22}")
  for name, scores in summary.items():
    error = f"{100 * scores['completeness_error']:.3f}%" if "completeness_error" in scores else ""
    lines.append(f"{name:<28} {scores['deletion_auc']:>9.3f} {scores['insertion_auc']:>9.3f} {error:>22}")
  return "\n".join(lines)


def _class_models(config: ml_collections.ConfigDict, classifier: Classifier, shape, predicted: list[int]):
  """The class-model images of config.explain.visualize_class, as (title, image) pairs."""
  options, scorer = config.explain.visualize, Scorer.from_classifier(classifier)
  found = []
  for i, (title, layer, index) in enumerate(
    visualize.targets(tuple(config.explain.visualize_class), classifier.class_names, predicted)
  ):
    image = visualize.class_model(
      scorer, index, jax.random.key(config.seed + i), image_shape=tuple(shape), layer=layer, **options.to_dict()
    )
    found.append((title, np.asarray(image)))
  return found


def run_explain(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The mode: explains the chosen images with the run's newest checkpoint, writes the PNGs and explain.json."""
  methods.check_options(config.explain)
  classifier = Classifier.load(workdir)
  visualize.targets(tuple(config.explain.visualize_class), classifier.class_names, [0])  # Fails early on a typo.
  images, sources, labels = _chosen_images(config, classifier)
  on_images = classifier.on_images()  # NaFlex: the same weights on whole images; anything else: itself.
  if classifier.preprocessing.packs:  # Each image at its own size, explained on its own.
    images = [classifier.preprocessing.image(packed) for packed in images]
    results = [
      result
      for i, image in enumerate(images)
      for result in explain_images(on_images, image[None], config.explain, seed=config.seed + i)
    ]
  else:
    results = explain_images(classifier, images, config.explain, seed=config.seed)
  folder = os.path.join(workdir, "explain")
  os.makedirs(folder, exist_ok=True)
  names, records = classifier.class_names, []
  for i, (image, source, true, result) in enumerate(zip(images, sources, labels, results)):
    record = _record(source, true, result, names)
    truth = "" if true is None else f", true {record['true_class']}"
    title = f"{source} | predicted {record['predicted_class']} ({100 * result['probability']:.1f}%){truth}"
    figures.write_image(folder, i, image, result, title)
    records.append(record)
  if "class_model" in config.explain.methods:
    predicted = [result["label"] for result in results]
    figures.write_class_models(folder, _class_models(config, on_images, images[0].shape, predicted))
  summary = _summary(records)
  report = {"source": classifier.source, "grad_cam_layer": results[0]["layer"], "summary": summary, "images": records}
  with open(os.path.join(workdir, "explain.json"), "w") as f:
    json.dump(report, f, indent=2)
  print(_table(summary, len(records)), flush=True)
  return report
