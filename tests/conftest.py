"""Test setup: 8 simulated CPU devices (set before JAX starts) and one prepared copy of the digits dataset."""

import atexit
import os
import shutil
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` is importable.

from vitjax import use_xla_cpu_emitters  # noqa: E402

use_xla_cpu_emitters()  # The entry points' XLA settings, so that in-process results match the commands' own.
# Tests (and the commands they start) compile the same small programs again and again: one persistent XLA cache
# for the session, inherited by subprocesses, compiles each once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="vitjax-test-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")


# The longest files first (each of them 1.5-3 minutes under two workers): a worker that draws one of them last
# would run it alone while the other waits at the end.
LONGEST_FIRST = (
  "test_workflow.py",
  "test_train.py",
  "test_colab.py",
  "test_deploy.py",
  "test_finetune.py",
  "test_resume.py",
  "test_faults_multihost.py",
  "test_multihost.py",
  "test_parallel.py",
  "test_docs.py",
)


def pytest_collection_modifyitems(items):
  """Runs the files of LONGEST_FIRST first, in that order, and the rest as collected (the same on every worker)."""
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding the prepared embedded digits dataset."""
  from vitjax import data

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  data.prepare(data.builder_by_name("vitjax_digits", data_dir=data_dir))
  return data_dir
