"""The workflow's report: `report.json` and a self-contained `report.html` (figures inline as base64 PNG).

One row per stage with validation and test accuracy, parameters, training images/s, latency per image and size;
the test split is read here only, once, after every choice was made on the validation split. With them: the
stages' test accuracy against latency, the deployed model's confusion matrix, its most-confused pairs with test
images of each, its expected calibration error before and after temperature scaling and explanations of a few of its
test errors (``--mode=explain``).
"""

import base64
import html
import json
import os
import time
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from vitjax import checkpoints, classical, data, explain
from vitjax.deploy.classifier import Classifier
from vitjax.evaluate import metrics
from vitjax.workflow import deploy, figures, runs

COLUMNS = ("stage", "model", "val_accuracy", "test_accuracy", "params", "images_per_sec", "latency_ms", "size_bytes")


def latency_ms(workdir: str, *, repeats: int = 10) -> float:
  """Median time of one image through the run's jitted model (after a first, compiling call)."""
  classifier = Classifier.load(workdir)
  shape = classifier.input_shape or (32, 32, 3)
  image = np.zeros((1, *shape), np.uint8)
  classifier.predict(image)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    classifier.predict(image)
    times.append(time.perf_counter() - start)
  return 1000 * float(np.median(times))


def run_row(stage: str, record: dict[str, Any], workdirs: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
  """A stage's row for the runs in `workdirs` (several: an ensemble, logits averaged) and their test scores."""
  config = checkpoints.load_run(workdirs[0]).config
  test = runs.logits(config, workdirs, "test")
  row = {
    "stage": stage,
    "model": config.model.name + (f" x{len(workdirs)}" if len(workdirs) > 1 else ""),
    "val_accuracy": record["val_accuracy"],
    "test_accuracy": float(np.mean(test["logits"].argmax(axis=1) == test["labels"])),
    "params": test["params"] * len(workdirs),
    "images_per_sec": record.get("images_per_sec") or runs.images_per_sec(workdirs[0]),
    "latency_ms": sum(latency_ms(w) for w in workdirs),
    "size_bytes": 4 * test["params"] * len(workdirs),  # float32 parameters.
  }
  return row, test


def test_files(root: str) -> tuple[list[str], list[str]]:
  """(paths, class names) of the test split's files."""
  paths, labels = [], []
  test_dir = os.path.join(root, "test")
  for name in sorted(os.listdir(test_dir)):
    for entry in sorted(os.listdir(os.path.join(test_dir, name))):
      paths.append(os.path.join(test_dir, name, entry))
      labels.append(name)
  return paths, labels


def classical_row(record: dict[str, Any], root: str) -> dict[str, Any]:
  paths, labels = test_files(root)
  pixels = []
  for path in paths:  # Decoded as the folder source decodes them (three channels), grey files included.
    with Image.open(path) as image:
      pixels.append(np.asarray(image.convert("RGB")))
  start = time.perf_counter()
  predicted = classical.predict(record["workdir"], pixels)
  seconds = time.perf_counter() - start
  return {
    "stage": "baseline (classical)",
    "model": f"{record['feature']} + {record['classifier']}",
    "val_accuracy": record["val_accuracy"],
    "test_accuracy": float(np.mean(np.array(predicted) == np.array(labels))),
    "latency_ms": 1000 * seconds / max(len(paths), 1),  # Features and classifier, batched over the test split.
    "size_bytes": os.path.getsize(os.path.join(record["workdir"], record["model"])),
  }


def host_test_images(classifier: Classifier) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images, labels) of the test split through the host ops of `pp_eval`: the exported model's input."""
  view = classifier.config.data.copy_and_resolve_references()
  view.pp_eval = classifier.preprocessing.host_spec
  source = data.from_config(view)
  data.prepare(source)
  images, labels = [], []
  for batch in data.as_numpy(data.eval_dataset(source, view, batch_size=100, split="test")):
    keep = batch["mask"] > 0
    images.extend(batch["image"][keep])
    labels.extend(batch["labels"][keep].argmax(axis=1))
  return np.round(np.stack(images)).astype(np.uint8), np.array(labels)


def export_row(model: str, export: dict[str, Any], images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
  """An exported file's row: test accuracy in its own runtime on the host-side test `images`, one at a time as it
  would serve."""
  run_model = deploy.model_runner(export["path"], export["format"])
  predicted = np.array([int(run_model(images[i : i + 1]).argmax()) for i in range(len(images))])
  return {
    "stage": f"deploy ({export['format']} {export['quantize']})",
    "model": model,
    "test_accuracy": float(np.mean(predicted == labels)),
    "latency_ms": export["latency_ms"],
    "size_bytes": export["size_bytes"],
  }


def calibration(test: dict[str, Any], temperature: float) -> dict[str, Any]:
  """ECE (and the reliability bins) of the deployed model on the test split, before and after temperature T."""
  before = metrics.calibration(metrics.softmax(test["logits"]), test["labels"])
  after = metrics.calibration(metrics.softmax(test["logits"] / temperature), test["labels"])
  return {"temperature": temperature, "ece_before": before["ece"], "ece_after": after["ece"], "bins": (before, after)}


def confused_pairs(confusion: np.ndarray, class_names: list[str], *, pairs: int) -> list[dict[str, Any]]:
  """The deployed model's most frequent mistakes on the test split, by class name: where to look first."""
  return [
    {"true": class_names[t], "predicted": class_names[p], "count": n}
    for t, p, n in metrics.most_confused(confusion, pairs)
  ]


def explained_errors(run_dir: str, root: str, options: ml_collections.ConfigDict) -> dict[str, str]:
  """--mode=explain on the deployed run's first misclassified test files (its first test files if none is):
  {caption: PNG as base64}, one figure per image."""
  paths, names = test_files(root)
  classifier = Classifier.load(run_dir)
  predicted = [classifier.class_names[i] for i in classifier.predict(paths).argmax(axis=1)]
  wrong = [i for i in range(len(paths)) if predicted[i] != names[i]]
  chosen = (wrong or list(range(len(paths))))[: options.explain_images]
  config = classifier.config
  config.explain.methods, config.explain.files = tuple(options.explain_methods), tuple(paths[i] for i in chosen)
  explain.run_explain(config, run_dir)
  figures = {}
  for k, i in enumerate(chosen):
    verdict = "error" if wrong else "correct"
    caption = f"explained {verdict}: {os.path.relpath(paths[i], root)}, true {names[i]}, predicted {predicted[i]}"
    with open(os.path.join(run_dir, "explain", f"image_{k:03d}.png"), "rb") as f:
      figures[caption] = base64.b64encode(f.read()).decode()
  return figures


def stage_rows(stages: dict[str, Any], root: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Every stage's row, scored on the test split, and the deployed run's test logits."""
  base, select, tuned = stages["baseline"], stages["select"], stages["tune"]
  ensemble, deployed = stages["ensemble"], stages["deploy"]
  chosen = next(r for r in select["candidates"] if r["model"] == select["chosen"])
  rows = [classical_row(base["classical"], root)]
  for stage, record, dirs in (
    ("baseline (from scratch)", base["scratch"], [base["scratch"]["workdir"]]),
    ("select", chosen, [chosen["workdir"]]),
    ("tune", {"val_accuracy": tuned["best"]["accuracy"]}, [tuned["best"]["workdir"]]),
    ("ensemble", ensemble, [m["workdir"] for m in ensemble["members"]]),
    ("deploy (distilled)", deployed, [deployed["workdir"]]),
  ):
    row, test = run_row(stage, record, dirs)
    rows.append(row)
  return rows, test


def write(stages: dict[str, Any], root: str, workdir: str, options: ml_collections.ConfigDict) -> dict[str, Any]:
  """Scores every stage on the test split and writes report.json and report.html into `workdir`."""
  ensemble, deployed = stages["ensemble"], stages["deploy"]
  rows, test = stage_rows(stages, root)
  images, labels = host_test_images(Classifier.load(deployed["workdir"]))
  if not np.array_equal(labels, test["labels"]):
    raise RuntimeError("The exported model's test images are not in the order of the deployed run's test logits.")
  rows.extend(export_row(deployed["model"], export, images, labels) for export in deployed["exports"])
  cal = calibration(test, deployed["temperature"])
  predicted = test["logits"].argmax(axis=1)
  confusion = metrics.confusion_matrix(test["labels"], predicted, len(test["class_names"]))
  pairs = confused_pairs(confusion, test["class_names"], pairs=options.confused_pairs)
  report = {
    "split": stages["split"],
    "rows": [{k: row.get(k) for k in COLUMNS} for row in rows],
    "selection": stages["select"]["why"],
    "tuning": stages["tune"],
    "ensemble": {k: ensemble[k] for k in ("val_accuracy", "single_val_accuracy", "members", "left_out", "teacher")},
    "calibration": {k: v for k, v in cal.items() if k != "bins"},
    "confusion_matrix": {"class_names": test["class_names"], "matrix": confusion.tolist()},
    "most_confused": pairs,
    "deployed": {"workdir": deployed["workdir"], "exports": deployed["exports"], "teacher": deployed["teacher"]},
  }
  confused = None
  if pairs:  # A perfect model has no mistake to show.
    names, examples = test["class_names"], options.confused_examples
    confused = figures.confused_png(pairs, images, labels, predicted, names, examples=examples)
  pngs = figures.figures(report, test, cal["bins"], confused, stages["select"])
  explained = explained_errors(deployed["workdir"], root, options)
  report["explained"] = list(explained)
  pngs.update(explained)
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(workdir, "report.html"), "w") as f:
    f.write(to_html(report, pngs))
  return {"rows": report["rows"], "deployed": report["deployed"]}


def _cell(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return html.escape("" if value is None else str(value))


def _table(name: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
  head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
  body = "".join("<tr>" + "".join(f"<td>{_cell(r[c])}</td>" for c in columns) + "</tr>" for r in rows)
  return f"<table id='{name}'><tr>{head}</tr>{body}</table>"


def _notes(report: dict[str, Any]) -> list[str]:
  """The choices made, one sentence each."""
  split = report["split"]
  return [
    f"Split: {split['totals']} images (train/val/test), {len(split['classes'])} classes, imbalance ratio "
    f"{split['imbalance_ratio']}, {split['duplicate_files']} files in {split['duplicate_groups']} duplicate groups, "
    f"{split['skipped']} unreadable files skipped.",
    f"Selection: {report['selection']}",
    f"Ensemble: {report['ensemble']['val_accuracy']:.4f} validation accuracy against "
    f"{report['ensemble']['single_val_accuracy']:.4f} for a single member on average.",
    f"Deployed run: {report['deployed']['workdir']} (python -m vitjax.predict --workdir=...); exported models: "
    f"{', '.join(e['path'] for e in report['deployed']['exports'])}.",
    f"Distilled from: {report['deployed']['teacher']} (the ensemble's members, logits averaged).",
  ]


def to_html(report: dict[str, Any], images: dict[str, str]) -> str:
  """One page, no external files: the stage table, the choices made, calibration, the mistakes, the figures."""
  cal = report["calibration"]
  calibration_rows = [
    {"temperature scaling": "before", "temperature": 1.0, "ECE (test)": cal["ece_before"]},
    {"temperature scaling": "after", "temperature": cal["temperature"], "ECE (test)": cal["ece_after"]},
  ]
  tables = [
    _table("stages", COLUMNS, report["rows"]),
    "".join(f"<p>{html.escape(n)}</p>" for n in _notes(report)),
    "<h2>Calibration (temperature fitted on validation)</h2>",
    _table("calibration", ("temperature scaling", "temperature", "ECE (test)"), calibration_rows),
    "<h2>Most-confused pairs (deployed, test)</h2>",
    _table("confused", ("true", "predicted", "count"), report["most_confused"])
    if report["most_confused"]
    else "<p>No test image was misclassified.</p>",
  ]
  figs = "".join(
    f"<figure><img src='data:image/png;base64,{png}' alt='{html.escape(title)}'><figcaption>{html.escape(title)}"
    "</figcaption></figure>"
    for title, png in images.items()
  )
  return (
    "<!DOCTYPE html><html><head><meta charset='utf-8'><title>vitjax workflow report</title><style>"
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #999;"
    "padding:4px 8px;text-align:right}figure{display:inline-block;margin:1em}img{max-width:480px}</style></head>"
    "<body><h1>From a folder to a deployed model</h1>" + "".join(tables) + f"<h2>Figures</h2>{figs}</body></html>"
  )
