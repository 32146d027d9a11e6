"""python -m vitjax.workflow: a stable, duplicate-safe split; one Optuna study shared by two worker processes; the
default configs found from any directory; the whole workflow at runlocal size on the digits as PNG files,
SIGKILLed inside the study and continued, its report opened in headless Chromium."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import types

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vitjax.workflow import split, study

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = 8  # Six of the stages and the deployed model's mistakes, two explained errors.
CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it): never a browser download of Playwright's.


def _png(path, seed: int) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
  Image.fromarray(pixels).save(path)


def _splits(root: str) -> dict[str, str]:
  with open(os.path.join(root, split.SPLIT_FILE)) as f:
    return {f["file"]: f["split"] for f in json.load(f)["files"]}


def test_split_is_stable_stratified_and_keeps_duplicates_together(tmp_path):
  images, root = tmp_path / "images", str(tmp_path / "split")
  for i in range(60):
    _png(str(images / "cat" / f"{i}.png"), i)
  for i in range(20):
    _png(str(images / "dog" / f"{i}.png"), 100 + i)
  shutil.copy(images / "cat" / "0.png", images / "cat" / "copy.png")
  shutil.copy(images / "cat" / "1.png", images / "dog" / "same_bytes.png")  # A duplicate with another label.
  (images / "dog" / "broken.png").write_bytes(b"not an image")
  result = split.split_folder(str(images), root, fractions=FRACTIONS, seed=0, imbalance_threshold=2.0)
  first = _splits(root)
  assert result["skipped"] == 1 and "dog/broken.png" not in first
  assert result["duplicate_groups"] == 2 and result["conflicting_labels"] == 1
  assert first["cat/copy.png"] == first["cat/0.png"] and first["dog/same_bytes.png"] == first["cat/1.png"]
  assert result["imbalance_ratio"] > 2.0 and result["imbalanced"]
  assert all(result["counts"][s].get("cat") for s in split.SPLITS)
  assert 0.5 < result["totals"]["train"] / len(first) < 0.9
  linked = sum(len(files) for s in split.SPLITS for _, _, files in os.walk(os.path.join(root, s)))
  assert linked == len(first)
  for i in range(60, 90):  # New images move no old one.
    _png(str(images / "cat" / f"{i}.png"), i)
  split.split_folder(str(images), root, fractions=FRACTIONS, seed=0, imbalance_threshold=2.0)
  second = _splits(root)
  assert {k: second[k] for k in first} == first and len(second) == len(first) + 30


def test_existing_splits_are_respected_and_duplicates_never_straddle(tmp_path):
  images, root = tmp_path / "images", str(tmp_path / "split")
  for name in ("a", "b"):
    for i in range(30):
      _png(str(images / "train" / name / f"{i}.png"), ord(name) * 100 + i)
    for i in range(5):
      _png(str(images / "test" / name / f"t{i}.png"), 20_000 + ord(name) * 100 + i)
  shutil.copy(images / "train" / "a" / "0.png", images / "test" / "a" / "leak.png")
  split.split_folder(str(images), root, fractions=FRACTIONS, seed=0, imbalance_threshold=3.0)
  splits = _splits(root)
  assert all(s == "test" for f, s in splits.items() if f.startswith("test/") and not f.endswith("leak.png"))
  assert splits["test/a/leak.png"] == splits["train/a/0.png"] == "train"
  from_train = [s for f, s in splits.items() if f.startswith("train/")]
  assert set(from_train) == {"train", "val"}  # Val is drawn from train; the given test split stays whole.


WORKER = textwrap.dedent(
  """
  import sys, time
  from vitjax.workflow import study
  def objective(trial):
    x = trial.suggest_float("x", -5.0, 5.0)
    time.sleep(0.05)
    return -(x - 2.0) ** 2
  shared = study.open_study("shared", sys.argv[1], seed=int(sys.argv[3]), startup_trials=2)
  study.optimize(shared, objective, trials=12, worker=sys.argv[2], deadline=time.time() + 120)
  """
)


def test_two_workers_share_one_sqlite_study(tmp_path):
  url = study.storage_url("", str(tmp_path))
  study.open_study("shared", url, seed=0, startup_trials=2)  # Created once; the workers load it.
  env = {**os.environ, "PYTHONPATH": REPO}
  workers = [
    subprocess.Popen([sys.executable, "-c", WORKER, url, name, str(seed)], env=env, stderr=subprocess.PIPE)
    for seed, name in enumerate(("one", "two"))
  ]
  for worker in workers:
    assert worker.wait(timeout=300) == 0, worker.stderr.read().decode()[-3000:]
  trials = study.summary(study.open_study("shared", url, seed=0, startup_trials=2))
  assert len(trials) == 12 and all(t["state"] == "COMPLETE" for t in trials)
  assert {t["worker"] for t in trials} == {"one", "two"}
  assert len({t["number"] for t in trials}) == 12


def test_the_default_configs_are_found_from_any_directory(digits_folder, tmp_path, monkeypatch):
  """The command's default config and the run config it names load with the working directory elsewhere."""
  from vitjax.errors import ConfigError
  from vitjax.workflow import runs

  monkeypatch.chdir(tmp_path)
  assert runs.load_config_file("configs/folder.py", digits_folder).data.dataset == "folder"
  with pytest.raises(ConfigError, match="is not a file"):
    runs.load_config_file("configs/no_such_config.py", digits_folder)
  command = [sys.executable, "-m", "vitjax.workflow", "--images=missing", "--workdir=wd"]
  run = subprocess.run(
    command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=300
  )
  assert run.returncode == 1 and run.stderr.splitlines()[-1] == "error: --images='missing' is not a folder.", run.stderr


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> str:
  """The first 400 scikit-learn digits as 8x8 PNG files, one folder per class."""
  from sklearn.datasets import load_digits

  digits, root = load_digits(), tmp_path_factory.mktemp("digits_png")
  for i, (image, label) in enumerate(zip(digits.images[:400], digits.target[:400])):
    os.makedirs(root / str(label), exist_ok=True)
    Image.fromarray((image * 255 / 16).astype(np.uint8)).save(root / str(label) / f"{i}.png")
  return str(root)


def _killed_inside_the_study(images: str, workdir: str) -> str:
  """Runs the command until the study's second trial starts training, then SIGKILLs it; its console output."""
  command = [
    sys.executable,
    "-m",
    "vitjax.workflow",
    f"--images={images}",
    f"--workdir={workdir}",
    f"--config={REPO}/configs/workflow.py:runlocal",
    "--budget=60m",  # No stage stops on the clock here: the counts the test checks are exact.
  ]
  env = {**os.environ, "PYTHONPATH": REPO}
  process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  second = os.path.join(workdir, "tune", "trial_001")
  deadline = time.time() + 600
  while not os.path.isdir(second) and process.poll() is None and time.time() < deadline:
    time.sleep(0.1)
  process.send_signal(signal.SIGKILL)
  output = process.communicate(timeout=60)[0]
  assert process.returncode == -signal.SIGKILL, output[-3000:]
  return output


def test_workflow_killed_inside_the_study_continues_it(digits_folder, tmp_path, monkeypatch):
  from vitjax.configs import workflow as workflow_config
  from vitjax.deploy import predictions
  from vitjax.deploy.classifier import Classifier
  from vitjax.workflow import baseline, pipeline, select

  workdir = str(tmp_path / "wf")
  output = _killed_inside_the_study(digits_folder, workdir)
  assert "workflow: select done in" in output and "| ETA " in output, output[-3000:]
  before = study.summary(
    study.open_study("workflow", study.storage_url("", os.path.join(workdir, "tune")), seed=0, startup_trials=1)
  )
  assert [t["state"] for t in before] == ["COMPLETE", "RUNNING"]
  for finished in (baseline, select):  # Finished stages are not run again.
    monkeypatch.setattr(finished, "run", lambda *a, **k: pytest.fail("a finished stage ran again"))
  config = workflow_config.get_config("runlocal")
  config.budget = "60m"
  summary = pipeline.run(config, digits_folder, workdir)
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  trials = report["tuning"]["trials"]
  assert len(trials) == 2 and trials[0]["accuracy"] == before[0]["accuracy"]
  assert trials[1]["params"] == before[1]["params"] and trials[1]["state"] in ("COMPLETE", "PRUNED")
  stages = [row["stage"] for row in report["rows"]]
  assert stages[0] == "baseline (classical)" and stages[-2:] == ["deploy (tflite int8)", "deploy (onnx int8)"]
  assert all(0.0 <= row["test_accuracy"] <= 1.0 for row in report["rows"])
  assert all(row["size_bytes"] > 0 and row["latency_ms"] > 0 for row in report["rows"][-2:])
  members = [m["workdir"] for m in report["ensemble"]["members"]]
  assert len(members) == 2 and report["deployed"]["teacher"] == ",".join(members)  # Distilled from the average.
  assert "ece_after" in report["calibration"]
  assert report["most_confused"][0]["count"] >= report["most_confused"][-1]["count"] > 0
  assert len(report["explained"]) == 2 and all(e.startswith("explained error: ") for e in report["explained"])
  with open(os.path.join(workdir, "report.html")) as f:
    page = f.read()
  assert page.count("data:image/png;base64,") == FIGURES and "src='http" not in page
  deployed = summary["deployed"]["workdir"]
  output = str(tmp_path / "predictions.csv")
  predictions.write_csv(
    Classifier.load(deployed),
    [os.path.join(digits_folder, "3", os.listdir(os.path.join(digits_folder, "3"))[0])],
    output,
  )
  assert open(output).read().count("\n") == 2
  _check_in_browser(os.path.join(workdir, "report.html"), report)


def _shown(value) -> str:
  return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))


def _check_in_browser(path: str, report: dict) -> None:
  """Every figure decodes and the tables show report.json's numbers, as headless Chromium renders the page."""
  if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
      pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package.")
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (the report was checked without a browser).")
  from playwright.sync_api import sync_playwright

  with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=CHROMIUM)
    try:
      page = browser.new_page()
      page.goto(pathlib.Path(path).as_uri())  # Returns once the page and its images have loaded.
      widths = page.eval_on_selector_all("img", "images => images.map(i => i.complete ? i.naturalWidth : 0)")
      tables = page.evaluate(
        "() => Object.fromEntries([...document.querySelectorAll('table')].map(t => "
        "[t.id, [...t.rows].slice(1).map(r => [...r.cells].map(c => c.innerText.trim()))]))"
      )
    finally:
      browser.close()
  assert len(widths) == FIGURES and all(w > 0 for w in widths), widths
  columns = ("stage", "val_accuracy", "test_accuracy")
  assert [[row[i] for i in (0, 2, 3)] for row in tables["stages"]] == [
    [_shown(row[c]) for c in columns] for row in report["rows"]
  ]
  cal = report["calibration"]
  assert [row[2] for row in tables["calibration"]] == [_shown(cal["ece_before"]), _shown(cal["ece_after"])]
  assert tables["confused"] == [[p["true"], p["predicted"], str(p["count"])] for p in report["most_confused"]]


def _fake_train(started: list[str], *, compile_s: float, unfinished: tuple[str, ...] = ()):
  """runs.train without training: `compile_s` before the first step, then the Deadline hooks see that step."""

  def train(config, run_dir, *, more_hooks):
    started.append(os.path.basename(run_dir))
    time.sleep(compile_s)
    context = types.SimpleNamespace(step=1, num_steps=10, stop_reason=None, state=types.SimpleNamespace(step=1))
    for hook in more_hooks:
      hook(context)
    finished = os.path.basename(run_dir) not in unfinished
    return {"accuracy": 0.5, "step": 10, "finished": finished, "stop_reason": None if finished else "budget"}

  return train


def test_select_starts_no_candidate_the_time_left_cannot_compile(monkeypatch, tmp_path):
  from vitjax.configs import workflow as workflow_config
  from vitjax.workflow import runs, select

  started = []
  monkeypatch.setattr(runs, "train", _fake_train(started, compile_s=0.5))
  monkeypatch.setattr(runs, "with_steps", lambda config, epochs: config)
  monkeypatch.setattr(runs, "images_per_sec", lambda workdir: 100.0)
  workflow = workflow_config.get_config("runlocal")
  workflow.select.candidates = ("a", "b", "c")
  base = ml_collections.ConfigDict({"model": {"name": ""}, "pretrained": {"path": ""}})
  result = select.run(workflow, base, str(tmp_path), deadline=time.time() + 0.8)
  assert started == ["a"] and result["chosen"] == "a"  # 0.3 s left after a's 0.5 s start: b and c would not fit.
  assert [r["stop_reason"] for r in result["candidates"][1:]] == ["not started: budget"] * 2
  started.clear()
  result = select.run(workflow, base, str(tmp_path), deadline=time.time() + 60)
  assert started == ["a", "b", "c"] and all(r["finished"] for r in result["candidates"])


def test_the_ensemble_averages_only_members_that_finished(monkeypatch, tmp_path):
  from vitjax.configs import workflow as workflow_config
  from vitjax.workflow import ensemble, runs, tune

  started, averaged = [], []
  monkeypatch.setattr(runs, "train", _fake_train(started, compile_s=0.0, unfinished=("seed_2",)))
  monkeypatch.setattr(runs, "images_per_sec", lambda workdir: 100.0)
  monkeypatch.setattr(tune, "apply", lambda config, params, evals: config)

  def logits(config, workdirs, split):
    averaged.extend(workdirs)
    return {"logits": np.eye(2), "labels": np.arange(2)}

  monkeypatch.setattr(runs, "logits", logits)
  workflow = workflow_config.get_config("runlocal")
  workflow.ensemble.seeds = 3
  config = ml_collections.ConfigDict({"seed": 0, "model": {"name": "m"}})
  best = {"workdir": "best_trial", "accuracy": 0.9, "params": {}}
  result = ensemble.run(workflow, config, best, str(tmp_path), deadline=time.time() + 60)
  assert started == ["seed_1", "seed_2"] and averaged == ["best_trial", str(tmp_path / "seed_1")]
  assert [m["seed"] for m in result["left_out"]] == [2] and result["teacher"] == ",".join(averaged)
