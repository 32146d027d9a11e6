"""vitjax: Vision Transformers, ResNets and hybrids in JAX/Flax."""

import os

__version__ = "0.1.0"


def use_xla_cpu_emitters() -> None:
  """Asks XLA's CPU backend for its own matmul and convolution emitters instead of YNNPACK's fusions.

  Train steps of convolutional networks run up to 2x faster, ViTs' 15% (benchmarks/RESULTS.md). XLA reads its flags
  when its CPU backend starts, so call this before the first JAX computation; a setting already in XLA_FLAGS is kept.
  The command-line entry points call it; importing vitjax changes nothing.
  """
  if "xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_experimental_ynn_fusion_type=".strip()


__all__ = ["Classifier", "ConfigError", "use_xla_cpu_emitters"]


def __getattr__(name: str):
  # `vitjax.Classifier` imports JAX, Flax and TensorFlow on first use only, so that `import vitjax` stays cheap.
  if name == "Classifier":
    from vitjax.deploy.classifier import Classifier

    return Classifier
  if name == "ConfigError":
    from vitjax.errors import ConfigError

    return ConfigError
  raise AttributeError(f"module 'vitjax' has no attribute {name!r}")
