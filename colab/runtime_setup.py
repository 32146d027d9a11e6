"""Installs vitjax into a notebook runtime that lacks it (Colab), adding only the packages the runtime does not have.

Colab ships jax, jaxlib and TensorFlow built for its GPU or TPU, and numpy matched to them: the CPU pins of
requirements.txt would replace them. So a requirement the runtime already has (by name) keeps the runtime's version,
a missing one is installed at its pinned version, and vitjax itself is installed editable without dependencies.
The notebooks' first cell calls `install(checkout)` and restarts the runtime when it returns names.
"""

import importlib.metadata
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping

# Requirements that another distribution satisfies: Colab's `tensorflow` has the GPU kernels `tensorflow-cpu` lacks.
PROVIDED_BY = {"tensorflow-cpu": ("tensorflow", "tensorflow-cpu", "tf-nightly")}
# The test suite's tools: no notebook needs them.
TEST_TOOLS = ("pytest", "pytest-xdist", "ruff", "nbclient", "nbformat", "ipykernel")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)")


def normalize(name: str) -> str:
  """A distribution name as pip compares them (PEP 503): lower case, runs of `-_.` as one `-`."""
  return re.sub(r"[-_.]+", "-", name).lower()


def pins(requirements: str) -> dict[str, tuple[str, str]]:
  """{normalized name: (the requirement line, its pinned version)} of a requirements.txt text."""
  found = {}
  for line in requirements.splitlines():
    if match := _PIN.match(line.strip()):
      found[normalize(match[1])] = (line.strip(), match[3])
  return found


def plan(requirements: str, installed: Mapping[str, str]) -> tuple[list[str], list[str]]:
  """(requirement lines to install, notes on kept packages whose version differs from the pin) for a runtime
  whose distributions are `installed` ({normalized name: version})."""
  to_install, kept = [], []
  for name, (line, version) in pins(requirements).items():
    if name in TEST_TOOLS:
      continue
    present = [other for other in PROVIDED_BY.get(name, (name,)) if other in installed]
    if not present:
      to_install.append(line)
    elif installed[present[0]] != version:
      kept.append(f"{present[0]} {installed[present[0]]} (tested: {name} {version})")
  return to_install, kept


def installed_versions() -> dict[str, str]:
  """{normalized name: version} of every distribution this interpreter sees."""
  return {normalize(d.metadata["Name"]): d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}


def replaced_while_loaded(before: Mapping[str, str], after: Mapping[str, str], loaded: Iterable[str]) -> list[str]:
  """Distributions that had a version before, another one after, and are among `loaded` (normalized names)."""
  return sorted(name for name in set(loaded) if name in before and after.get(name) != before[name])


def loaded_distributions() -> set[str]:
  """Normalized names of the distributions whose modules this process has already imported."""
  owners = importlib.metadata.packages_distributions()
  tops = {module.partition(".")[0] for module in list(sys.modules)}
  return {normalize(dist) for top in tops for dist in owners.get(top, ())}


def install(checkout: str) -> list[str]:
  """Installs what the runtime lacks and vitjax from `checkout`; returns the already imported distributions that
  pip replaced on the way (a dependency's minimum version), which only a restart of the runtime loads."""
  with open(f"{checkout}/requirements.txt") as f:
    to_install, kept = plan(f.read(), installed_versions())
  if kept:
    print("Kept the runtime's own:", "; ".join(kept))
  before = installed_versions()
  pip = [sys.executable, "-m", "pip", "install", "-q"]
  if to_install:
    print("Installing:", " ".join(to_install))
    subprocess.run([*pip, *to_install], check=True)
  subprocess.run([*pip, "--no-deps", "-e", checkout], check=True)
  return replaced_while_loaded(before, installed_versions(), loaded_distributions())
