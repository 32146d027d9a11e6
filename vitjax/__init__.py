"""vitjax: Vision Transformers, ResNets and hybrids in JAX/Flax."""

import os

__version__ = "0.1.0"

# On CPU, XLA's own matmul and convolution emitters instead of YNNPACK's fusions: train steps of convolutional
# networks up to 2x faster, ViTs' 15% (benchmarks/RESULTS.md). XLA reads its flags when its CPU backend starts, so
# this applies wherever vitjax is imported before the first JAX computation; a setting in XLA_FLAGS is kept.
if "xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_experimental_ynn_fusion_type=".strip()

__all__ = ["Classifier"]


def __getattr__(name: str):
  # `vitjax.Classifier` imports JAX, Flax and TensorFlow on first use only, so that `import vitjax` stays cheap.
  if name == "Classifier":
    from vitjax.deploy.classifier import Classifier

    return Classifier
  raise AttributeError(f"module 'vitjax' has no attribute {name!r}")
