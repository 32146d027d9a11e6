"""`import_timm()`: timm and torch, with a stand-in for a torchvision whose compiled ops do not match the installed
torch (PyPI's torchvision beside a local CPU torch). timm imports torchvision; nothing the benchmarks run uses it.

Standard library only: the benchmarks import it under a Python that has torch and timm but no JAX.
"""

import importlib.abc
import importlib.machinery
import sys
import unittest.mock


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Every `torchvision...` module as an empty mock, with the one class timm subclasses at import."""

  def find_spec(self, name, path, target=None):
    if name == "torchvision" or name.startswith("torchvision."):
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
    return None

  def create_module(self, spec):
    module = unittest.mock.MagicMock(__path__=[], __name__=spec.name, __spec__=spec)
    module.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (), {})
    return module

  def exec_module(self, module):
    del module


def import_timm():
  """(timm, torch), importing torchvision's stand-in when the real one fails to load."""
  try:
    import torchvision  # noqa: F401
  except (ImportError, RuntimeError):
    for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
      del sys.modules[name]
    sys.meta_path.insert(0, _TorchvisionStub())
  import timm
  import torch

  return timm, torch
