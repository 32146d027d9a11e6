"""Every command in README.md and docs/ is checked: configs and overrides parse, scripts take the flags shown, and the
quickstart's own chain (train, evaluate, predict, export) runs for real, shrunk with `runlocal`."""

import pathlib
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

REPO = pathlib.Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
QUICKSTART_RUN = "/tmp/vitjax-quickstart"


def _fenced_commands(text: str) -> list[str]:
  """Commands of ```bash blocks, continuation lines joined, `a && b` split, comments dropped."""
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split("  #")[0].strip()
      commands += [part.strip() for part in line.split("&&") if part.strip()]
  return commands


def _inline_commands(text: str) -> list[str]:
  """Commands quoted inline, e.g. in a table: `python -m vitjax.... ` and `python benchmarks/...`."""
  return [c for c in re.findall(r"`(python (?:-m vitjax\.|benchmarks/)[^`]*)`", text) if "..." not in c and " --" in c]


def commands() -> list[tuple[str, str]]:
  found = []
  for page in PAGES:
    text = page.read_text()
    found += [(page.name, c) for c in _fenced_commands(text) + _inline_commands(text)]
  return found


ALL = commands()
MAIN = [(page, c) for page, c in ALL if c.startswith("python -m vitjax.main")]
SCRIPTS = [(page, c) for page, c in ALL if c.startswith("python benchmarks/")]


def _flags(command: str) -> dict[str, str]:
  words = shlex.split(command)
  return dict((w[2:].split("=", 1) + [""])[:2] for w in words if w.startswith("--"))


def parse_config(config_arg: str, overrides: list[str]):
  argv = ["prog", f"--config={config_arg}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def test_the_pages_show_commands():
  assert len(MAIN) >= 10 and SCRIPTS, [c for _, c in ALL]


@pytest.mark.parametrize("page, command", MAIN, ids=[f"{p}:{c[21:80]}" for p, c in MAIN])
def test_every_main_command_has_a_config_that_parses_with_its_overrides(page, command, tmp_path):
  options = _flags(command)
  config_arg = options["config"].replace("/path/to/configs", str(REPO / "configs"))
  folder = re.match(r"configs/folder\.py:(\S+)", config_arg)
  if folder:  # A folder of two classes stands in for the user's own.
    for label in ("a", "b"):
      (tmp_path / label).mkdir()
      for i in range(3):
        (tmp_path / label / f"{i}.png").write_bytes(_png(i))
    config_arg = f"configs/folder.py:{tmp_path}"
  overrides = [f"--{k}={v}" for k, v in options.items() if k.startswith("config.")]
  config = parse_config(str(REPO / config_arg.split(":")[0]) + config_arg[len(config_arg.split(":")[0]) :], overrides)
  assert config.batch_size > 0
  assert f'"{options.get("mode", "train")}"' in (REPO / "vitjax" / "main.py").read_text(), command


@pytest.mark.parametrize("page, command", SCRIPTS, ids=[c[7:60] for _, c in SCRIPTS])
def test_every_benchmark_command_names_a_script_and_flags_it_takes(page, command):
  script = REPO / shlex.split(command)[1]
  source = script.read_text()
  for name in _flags(command):
    assert f'"--{name}"' in source, f"{page}: {script.name} takes no --{name}"


def test_the_quickstart_chain_runs_as_written(tmp_path):
  """Train (shrunk), evaluate, predict and export exactly as the pages say, on one run."""
  run, scans = str(tmp_path / "run"), tmp_path / "scans"
  scans.mkdir()
  (scans / "digit.png").write_bytes(_png(7))
  on_the_run = [c for _, c in ALL if QUICKSTART_RUN in c]
  chosen = [f"python -m vitjax.main --config=configs/quickstart.py:runlocal --workdir={QUICKSTART_RUN}"]
  for kind in ("--mode=eval", "vitjax.predict", "vitjax.export"):
    chosen.append(next(c for c in on_the_run if kind in c))
  for command in chosen:
    command = command.replace(QUICKSTART_RUN, "RUN").replace("/tmp/", f"{tmp_path}/").replace("RUN", run)
    command = command.replace("scans/", f"{scans}/")
    words = shlex.split(command.replace("predictions.csv", str(tmp_path / "p.csv")))
    done = subprocess.run([sys.executable, *words[1:]], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"


def _png(seed: int) -> bytes:
  import io

  import numpy as np
  from PIL import Image

  pixels = np.random.default_rng(seed).integers(0, 256, (8, 8), np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()
