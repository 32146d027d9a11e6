"""The house rules, enforced: ruff clean, small functions and modules, and arrows that only point one way."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "vitjax"


def _modules():
  return sorted(PACKAGE.rglob("*.py"))


def _imported(path: pathlib.Path) -> set[str]:
  """Every `vitjax...` module that `path` imports, at any depth of the file."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.update([node.module, *(f"{node.module}.{alias.name}" for alias in node.names)])
  return {name for name in names if name.startswith("vitjax")}


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff_is_clean(command):
  run = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=REPO, capture_output=True, text=True)
  assert run.returncode == 0, run.stdout + run.stderr


def test_no_function_over_60_lines_and_no_module_over_400():
  too_long = []
  for path in _modules():
    source = path.read_text()
    if source.count("\n") > 400:
      too_long.append(f"{path.relative_to(REPO)}: {source.count(chr(10))} lines")
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60:
        too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}()")
  assert not too_long


def test_only_main_imports_the_loop_and_arrows_point_one_way():
  # A package may import only those after it in this order (and itself); `__init__` is vitjax's own face.
  order = [
    "main",
    "workflow",
    "predict",
    "export",
    "configs",
    "__init__",
    "train",
    "explain",
    "robustness",
    "classical",
    "deploy",
  ]
  order += ["evaluate", "transfer"]
  order += ["checkpoints", "losses", "sharding", "data", "models"]
  for path in _modules():
    relative = path.relative_to(PACKAGE).with_suffix("")
    own = relative.parts[0]
    for name in _imported(path):
      parts = name.split(".")
      if len(parts) < 2 or parts[1] not in order or parts[1] == own:
        continue
      assert order.index(parts[1]) > order.index(own), f"{relative} imports {name}"
    if relative.parts not in (("main",), ("workflow", "runs")):  # The workflow trains through train_and_evaluate.
      assert "vitjax.train.loop" not in _imported(path), f"{relative} imports the loop"


def test_benchmarks_do_not_import_the_loop_for_helpers():
  for path in (REPO / "benchmarks").glob("*.py"):
    source = path.read_text()
    assert "loop." not in source.replace("loop.train_and_evaluate", ""), path.name


def test_one_indentation_width():
  for path in [*_modules(), *(REPO / "tests").glob("*.py"), *(REPO / "configs").glob("*.py")]:
    indents = {len(line) - len(line.lstrip(" ")) for line in path.read_text().splitlines() if line.startswith(" ")}
    assert all(i % 2 == 0 for i in indents), path
    assert not indents or min(indents) == 2, path


def test_importing_the_library_changes_no_process_state():
  """XLA flags and other process-wide settings are the entry points' choice, never a side effect of an import."""
  probe = (
    # Its dependencies first: TensorFlow, OpenCV and scikit-learn set variables of their own on import.
    "import os, cv2, jax, sklearn, tensorflow, tensorflow_datasets; before = dict(os.environ); "
    "import vitjax, vitjax.models, vitjax.data, vitjax.deploy, vitjax.train.loop; "
    "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)); "
    "print(changed); vitjax.use_xla_cpu_emitters(); print('ynn_fusion_type=' in os.environ['XLA_FLAGS'])"
  )
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, check=True)
  assert run.stdout.split("\n")[:2] == ["[]", "True"], run.stdout + run.stderr[-2000:]
