"""AlexNet as torchvision defines it (Krizhevsky 2014's one-GPU variant), and torch's adaptive average pooling.

Tree: torchvision's `features.N` / `classifier.N` indices as `features_N` / `classifier_N`; the last classifier
layer (`classifier.6`) is `head`. The first classifier layer reads the 6x6x256 map flattened in (h, w, c) order
(torch flattens (c, h, w): the converter permutes its kernel).
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.models import registry
from vitjax.models.layers import Classifier, Conv
from vitjax.models.pooling import max_pool

Array = jax.Array
Dtype = Any

# torch's default for Conv2d and Linear weights (kaiming_uniform with a = sqrt(5)): uniform, variance 1 / (3 fan_in).
_torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _pool_matrix(size: int, out: int) -> np.ndarray:
  """(out, size) averaging weights of torch's adaptive pooling: bin i spans [floor(i n / m), ceil((i + 1) n / m))
  of the n = `size` inputs for m = `out` outputs."""
  weights = np.zeros((out, size), np.float32)
  for i in range(out):
    start, end = (i * size) // out, -((-(i + 1) * size) // out)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_avg_pool(x: Array, output_size: tuple[int, int]) -> Array:
  """torch's `adaptive_avg_pool2d` on NHWC: overlapping bins when the size does not divide, repeats when it grows."""
  rows = jnp.asarray(_pool_matrix(x.shape[1], output_size[0]), x.dtype)
  cols = jnp.asarray(_pool_matrix(x.shape[2], output_size[1]), x.dtype)
  return jnp.einsum("ih,jw,nhwc->nijc", rows, cols, x)


class AlexNet(Classifier):
  """AlexNet (torchvision): five convolutions, three max-pools, adaptive pooling to 6x6, three fully connected.

  `widths` are the five convolutions' channels, `mlp_features` the two hidden layers' (shrinkable for tests).
  Dropout before both hidden layers, as torchvision. Smallest input: 63x63.
  """

  num_classes: int | None
  widths: Sequence[int] = (64, 192, 384, 256, 256)
  mlp_features: int = 4096
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Array:
    conv = functools.partial(Conv, use_bias=True, kernel_init=_torch_default_init, dtype=self.dtype)
    pool = functools.partial(max_pool, window_shape=(3, 3), strides=(2, 2), padding="VALID")
    w = self.widths
    x = nn.relu(conv(w[0], (11, 11), (4, 4), padding=((2, 2), (2, 2)), name="features_0")(images))
    x = pool(x)
    x = pool(nn.relu(conv(w[1], (5, 5), padding=((2, 2), (2, 2)), name="features_3")(x)))
    for index, features in zip((6, 8, 10), w[2:]):
      x = nn.relu(conv(features, (3, 3), padding=((1, 1), (1, 1)), name=f"features_{index}")(x))
    x = adaptive_avg_pool(pool(x), (6, 6))
    x = x.reshape(x.shape[0], -1)
    for index in (1, 4):
      x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
      dense = nn.Dense(self.mlp_features, dtype=self.dtype, kernel_init=_torch_default_init, name=f"classifier_{index}")
      x = nn.relu(dense(x))
    x = x.astype(jnp.float32)
    return self.classify(x)


FAMILY = registry.family(
  "alexnet",
  options={
    "dropout_rate": registry.Option(float, "Dropout before both hidden layers of the classifier (torchvision: 0.5).")
  },
  layer_groups=registry.LayerGroups(blocks=((r"^features_(\d+)/", 1),)),  # Each layer of `features`; no stem.
)
registry.register(FAMILY, "alexnet", AlexNet, params=61_100_840)  # torchvision's count, 224x224, 1000 classes.
