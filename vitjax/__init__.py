"""vitjax: Vision Transformers, ResNets and hybrids in JAX/Flax."""

__version__ = "0.1.0"
__all__ = ["Classifier"]


def __getattr__(name: str):
  # `vitjax.Classifier` imports JAX, Flax and TensorFlow on first use only, so that `import vitjax` stays cheap.
  if name == "Classifier":
    from vitjax.deploy.classifier import Classifier

    return Classifier
  raise AttributeError(f"module 'vitjax' has no attribute {name!r}")
