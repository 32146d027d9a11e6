"""The workflow's report: `report.json` and a self-contained `report.html` (figures inline as base64 PNG).

One row per stage with validation and test accuracy, parameters, training images/s, latency per image and size;
the test split is read here only, once, after every choice was made on the validation split. The deployed model's
confusion matrix, its expected calibration error before and after temperature scaling and an explanation of a
test prediction (``--mode=explain``) come with it.
"""

import base64
import html
import io
import json
import os
import tempfile
import time
from typing import Any

import ml_collections
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from vitjax import checkpoints, classical, data, explain
from vitjax.deploy.classifier import Classifier
from vitjax.evaluate import metrics, plots
from vitjax.workflow import deploy, runs

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


def export_row(record: dict[str, Any]) -> dict[str, Any]:
  """The exported file's row: test accuracy in its own runtime, one image at a time as it would serve."""
  images, labels = host_test_images(Classifier.load(record["workdir"]))
  export = record["export"]
  run_model = deploy.model_runner(export["path"], export["format"])
  predicted = np.array([int(run_model(images[i : i + 1]).argmax()) for i in range(len(images))])
  return {
    "stage": f"deploy ({export['format']} {export['quantize']})",
    "model": record["model"],
    "test_accuracy": float(np.mean(predicted == labels)),
    "latency_ms": export["latency_ms"],
    "size_bytes": export["size_bytes"],
  }


def calibration(test: dict[str, Any], temperature: float) -> dict[str, Any]:
  """ECE (and the reliability bins) of the deployed model on the test split, before and after temperature T."""
  before = metrics.calibration(metrics.softmax(test["logits"]), test["labels"])
  after = metrics.calibration(metrics.softmax(test["logits"] / temperature), test["labels"])
  return {"temperature": temperature, "ece_before": before["ece"], "ece_after": after["ece"], "bins": (before, after)}


def _png(fig: Figure) -> str:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=80)
  return base64.b64encode(buffer.getvalue()).decode()


def _reliability_png(bins: dict[str, Any], title: str) -> str:
  with tempfile.TemporaryDirectory() as scratch:
    path = os.path.join(scratch, "reliability.png")
    plots.plot_reliability_diagram(bins, path, title=title)
    with open(path, "rb") as f:
      return base64.b64encode(f.read()).decode()


def pareto_png(candidates: list[dict[str, Any]], front: list[str]) -> str:
  fig = Figure(figsize=(5, 4))
  ax = fig.subplots()
  for row in candidates:
    ax.scatter(row["images_per_sec"], row["val_accuracy"], color="C1" if row["model"] in front else "C0")
    ax.annotate(row["model"], (row["images_per_sec"], row["val_accuracy"]), fontsize=8)
  ax.set_xlabel("training images/s")
  ax.set_ylabel("validation accuracy")
  ax.set_title("candidates (Pareto front in orange)")
  fig.tight_layout()
  return _png(fig)


def figures(report: dict[str, Any], test: dict[str, Any], bins: tuple, candidates: list, front: list) -> dict:
  """The report's figures as base64 PNG: confusion matrix, reliability before/after, candidates."""
  confusion = metrics.confusion_matrix(test["labels"], test["logits"].argmax(axis=1), len(test["class_names"]))
  report["confusion_matrix"] = {"class_names": test["class_names"], "matrix": confusion.tolist()}
  title = "deployed model, test split"
  return {
    "confusion matrix (deployed, test)": _png(
      plots.confusion_matrix_figure(confusion, test["class_names"], title=title)
    ),
    "reliability before temperature scaling": _reliability_png(bins[0], "before"),
    "reliability after temperature scaling": _reliability_png(
      bins[1], f"after (T={report['calibration']['temperature']:.3g})"
    ),
    "candidates: accuracy against speed": pareto_png(candidates, front),
  }


def explanation_png(run_dir: str, options: ml_collections.ConfigDict) -> str:
  """--mode=explain on the deployed run's first test images; the first image's figure."""
  config = checkpoints.load_run(run_dir).config
  config.explain.methods, config.explain.num_images = tuple(options.explain_methods), options.explain_images
  config.data.eval_split = "test"
  explain.run_explain(config, run_dir)
  folder = os.path.join(run_dir, "explain")
  first = sorted(name for name in os.listdir(folder) if name.startswith("image_") and name.endswith(".png"))[0]
  with open(os.path.join(folder, first), "rb") as f:
    return base64.b64encode(f.read()).decode()


def write(stages: dict[str, Any], root: str, workdir: str, options: ml_collections.ConfigDict) -> dict[str, Any]:
  """Scores every stage on the test split and writes report.json and report.html into `workdir`."""
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
  rows.append(export_row(deployed))
  cal = calibration(test, deployed["temperature"])
  report = {
    "split": stages["split"],
    "rows": [{k: row.get(k) for k in COLUMNS} for row in rows],
    "selection": select["why"],
    "tuning": tuned,
    "ensemble": {k: ensemble[k] for k in ("val_accuracy", "single_val_accuracy", "members", "teacher")},
    "calibration": {k: v for k, v in cal.items() if k != "bins"},
    "deployed": {"workdir": deployed["workdir"], "export": deployed["export"], "teacher": deployed["teacher"]},
  }
  images = figures(report, test, cal["bins"], select["candidates"], select["pareto"])
  images["explanation (deployed, first test image)"] = explanation_png(deployed["workdir"], options)
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(workdir, "report.html"), "w") as f:
    f.write(to_html(report, images))
  return {"rows": report["rows"], "deployed": report["deployed"]}


def _cell(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return html.escape("" if value is None else str(value))


def to_html(report: dict[str, Any], images: dict[str, str]) -> str:
  """One page, no external files: the stage table, the choices made, the figures."""
  head = "".join(f"<th>{c}</th>" for c in COLUMNS)
  body = "".join("<tr>" + "".join(f"<td>{_cell(r[c])}</td>" for c in COLUMNS) + "</tr>" for r in report["rows"])
  split = report["split"]
  cal = report["calibration"]
  notes = [
    f"Split: {split['totals']} images (train/val/test), {len(split['classes'])} classes, imbalance ratio "
    f"{split['imbalance_ratio']}, {split['duplicate_files']} files in {split['duplicate_groups']} duplicate groups, "
    f"{split['skipped']} unreadable files skipped.",
    f"Selection: {report['selection']}",
    f"Ensemble: {report['ensemble']['val_accuracy']:.4f} validation accuracy against "
    f"{report['ensemble']['single_val_accuracy']:.4f} for a single member on average.",
    f"Calibration (test): ECE {cal['ece_before']:.4f} before, {cal['ece_after']:.4f} after temperature "
    f"{cal['temperature']:.3g} (fitted on validation).",
    f"Deployed run: {report['deployed']['workdir']} (python -m vitjax.predict --workdir=...); exported model: "
    f"{report['deployed']['export']['path']}.",
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
    f"<body><h1>From a folder to a deployed model</h1><table><tr>{head}</tr>{body}</table>"
    + "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    + f"{figs}</body></html>"
  )
