"""DenseNet (Huang et al. 2017) as timm and torchvision define it: DenseNet-121, -169, -201 and -161.

Tree: the torch names without `features.`: `conv0`, `norm0`, `denseblock{i}/denselayer{j}/{norm1,conv1,norm2,conv2}`,
`transition{i}/{norm,conv}`, `norm5`; the `classifier` Linear is `head`.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.models import registry
from vitjax.models.layers import BlockStack, Classifier, Conv, Layer, batch_norm
from vitjax.models.pooling import max_pool

Array = jax.Array

# Growth rate and layers per dense block of each registered depth (DenseNet-161 is the wide k = 48 one).
VARIANTS = {
  121: dict(growth_rate=32, block_config=(6, 12, 24, 16)),
  169: dict(growth_rate=32, block_config=(6, 12, 32, 32)),
  201: dict(growth_rate=32, block_config=(6, 12, 48, 32)),
  161: dict(growth_rate=48, block_config=(6, 12, 36, 24)),
}

# torchvision's and timm's init: He normal over fan-in for every convolution.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class DenseLayer(Layer):
  """BN-ReLU-1x1 conv to `bn_size * growth_rate` channels, BN-ReLU-3x3 conv to `growth_rate`, concatenated on."""

  growth_rate: int
  bn_size: int
  train: bool

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(Conv, kernel_init=_conv_init, dtype=self.dtype)
    y = nn.relu(batch_norm(self.train, name="norm1", dtype=self.dtype)(x))
    y = conv(self.bn_size * self.growth_rate, (1, 1), padding="VALID", name="conv1")(y)
    y = nn.relu(batch_norm(self.train, name="norm2", dtype=self.dtype)(y))
    y = conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
    return jnp.concatenate([x, y], axis=-1)


class Transition(Layer):
  """BN-ReLU-1x1 conv to `features` channels (half the input), then 2x2 average pooling."""

  features: int
  train: bool

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = nn.relu(batch_norm(self.train, name="norm", dtype=self.dtype)(x))
    x = Conv(self.features, (1, 1), padding="VALID", kernel_init=_conv_init, dtype=self.dtype, name="conv")(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class DenseNet(Classifier):
  """DenseNet-BC: 7x7/2 stem of 2k channels, 3x3/2 max-pool, dense blocks joined by halving transitions, BN-ReLU,
  global average pooling, dropout (timm's `drop_rate`, default 0) and the classifier.

  BatchNorm: epsilon 1e-5, momentum 0.9 (torch's 0.1), statistics in `batch_stats`.
  """

  num_classes: int | None
  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  bn_size: int = 4
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Array:
    x = Conv(
      2 * self.growth_rate,
      (7, 7),
      (2, 2),
      padding=((3, 3), (3, 3)),
      kernel_init=_conv_init,
      dtype=self.dtype,
      name="conv0",
    )(images)
    x = nn.relu(batch_norm(train, name="norm0", dtype=self.dtype)(x))
    x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_layers in enumerate(self.block_config):
      layer = functools.partial(DenseLayer, self.growth_rate, self.bn_size, train, dtype=self.dtype)
      x = BlockStack(layer, num_layers, names="denselayer{}", first_index=1, name=f"denseblock{i + 1}")(x)
      if i < len(self.block_config) - 1:
        x = Transition(x.shape[-1] // 2, train, dtype=self.dtype, name=f"transition{i + 1}")(x)
    x = nn.relu(batch_norm(train, name="norm5", dtype=self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
    return self.classify(x, self.dropout_rate, train)


# A dense block and the transition after it share a depth; stem `conv0`/`norm0`.
FAMILY = registry.family(
  "densenet",
  options={"dropout_rate": registry.Option(float, "Dropout after every dense layer.")},
  layer_groups=registry.LayerGroups(blocks=((r"^(?:denseblock|transition)(\d+)/", 0),), stem=r"^(conv0|norm0)/"),
)
# torchvision's (and timm's) counts at 224x224 with 1000 classes.
for _depth, _params in {121: 7_978_856, 169: 14_149_480, 201: 20_013_928, 161: 28_681_000}.items():
  registry.register(FAMILY, f"densenet{_depth}", DenseNet, VARIANTS[_depth], params=_params)
