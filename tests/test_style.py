"""The house rules, enforced: ruff clean, small functions and modules, and arrows that only point one way."""

import ast
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
  order = ["main", "predict", "export", "__init__", "train", "explain", "robustness", "classical", "deploy"]
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
    if relative.parts != ("main",):
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
