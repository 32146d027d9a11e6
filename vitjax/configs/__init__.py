"""The shared builders of config files: `common` (every key once, `runlocal`) and `finetune` (transfer recipes),
and the configs that commands default to (`workflow`, and `folder`, which the workflow trains with).

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


def find(path: str) -> str | None:
  """The config file `path` as given, else in the checkout this package lies in, else, for ``configs/NAME.py``, the
  package's own ``vitjax/configs/NAME.py``: so a config named in another config is found from any directory and
  after ``pip install``. None when there is none."""
  here = os.path.dirname(os.path.abspath(__file__))
  candidates = [path, os.path.join(os.path.dirname(os.path.dirname(here)), path)]
  if os.path.dirname(os.path.normpath(path)) == "configs":
    candidates.append(os.path.join(here, os.path.basename(path)))
  return next((c for c in candidates if os.path.isfile(c)), None)
