"""vitjax: Vision Transformers, ResNets and hybrids in JAX/Flax."""

__version__ = "0.1.0"
