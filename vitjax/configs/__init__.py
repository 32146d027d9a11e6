"""The shared builders of config files: `common` (every key once, `runlocal`) and `finetune` (transfer recipes).

They live in the package so that a config file works from any directory: `from vitjax.configs import common`.
"""

import importlib.util
import os
import sys
from types import ModuleType


def sibling(config_file: str, name: str) -> ModuleType:
  """The config module `name` beside `config_file`, so that a config can build on another wherever both lie."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  key = f"vitjax_config_{name}_{abs(hash(path))}"
  if key not in sys.modules:
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
  return sys.modules[key]
