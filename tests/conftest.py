"""Test setup: 8 simulated CPU devices (set before JAX starts) and one prepared copy of the digits dataset."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` is importable.

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding the prepared embedded digits dataset."""
  from vitjax import data

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  data.prepare(data.builder_by_name("vitjax_digits", data_dir=data_dir))
  return data_dir
