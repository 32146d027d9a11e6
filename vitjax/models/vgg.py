"""VGG (Simonyan & Zisserman 2015) as timm defines it, with or without BatchNorm.

Tree: timm's `features.N` (torch's flat index of every conv, BatchNorm, ReLU and pool) as `features_N`; timm's
`pre_logits` ConvMlp (the classifier's two hidden layers as a 7x7 and a 1x1 convolution) as `conv_mlp/fc1`,
`conv_mlp/fc2` (not `pre_logits/`: the importer keeps that prefix for ViT's optional representation layer); timm's
`head.fc` as `head`. Torchvision's `classifier.0/3/6` Linear layers are the same weights reshaped.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.models import registry
from vitjax.models.alexnet import adaptive_avg_pool
from vitjax.models.layers import BatchNorm, Classifier, Conv, Layer
from vitjax.models.pooling import max_pool

Array = jax.Array

# Convolution widths per stage (a 2x2 max-pool ends each), timm's `cfgs` with the pools as stage ends.
STAGES = {
  11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
  13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
  16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
  19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}

# timm's init: He normal over fan-out for every convolution, the ConvMlp's included.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvMlp(Layer):
  """timm's VGG pre-logits: 7x7 conv -> ReLU -> dropout -> 1x1 conv -> ReLU, applied to the feature map.

  Maps smaller than the kernel are first brought up to it by adaptive average pooling, as timm does, so any input
  of at least 32x32 works; larger inputs give a map of 7x7 windows that the global pool averages.
  """

  features: int = 4096
  kernel_size: int = 7
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    k = self.kernel_size
    if x.shape[1] < k or x.shape[2] < k:
      x = adaptive_avg_pool(x, (max(k, x.shape[1]), max(k, x.shape[2])))
    conv = functools.partial(Conv, self.features, use_bias=True, kernel_init=_conv_init, dtype=self.dtype)
    x = nn.relu(conv((k, k), padding="VALID", name="fc1")(x))
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    return nn.relu(conv((1, 1), padding="VALID", name="fc2")(x))


class VGG(Classifier):
  """VGG: 3x3 convolutions (+ BatchNorm with `batch_norm`) and ReLU, a 2x2 max-pool after each stage, timm's ConvMlp,
  global average pooling and the classifier.

  `dropout_rate` (timm's `drop_rate`, default 0; torchvision's classifier uses 0.5) acts inside the ConvMlp and
  before the head. BatchNorm: epsilon 1e-5, momentum 0.9 (torch's 0.1), statistics in `batch_stats`.
  """

  num_classes: int | None
  stages: Sequence[Sequence[int]] = STAGES[16]
  batch_norm: bool = False
  mlp_features: int = 4096
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Array:
    x = self._features(images, train=train)
    x = ConvMlp(self.mlp_features, dropout_rate=self.dropout_rate, dtype=self.dtype, name="conv_mlp")(x, train=train)
    x = jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
    return self.classify(x, self.dropout_rate, train)

  def _features(self, x: Array, *, train: bool) -> Array:
    """timm's `features` Sequential; `index` counts its modules (ReLU and pools too) to name the layers as torch."""
    index = 0
    for stage in self.stages:
      for features in stage:
        x = Conv(
          features,
          (3, 3),
          padding=((1, 1), (1, 1)),
          use_bias=True,
          kernel_init=_conv_init,
          dtype=self.dtype,
          name=f"features_{index}",
        )(x)
        if self.batch_norm:
          x = BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name=f"features_{index + 1}"
          )(x)
        x = nn.relu(x)
        index += 3 if self.batch_norm else 2
      x = max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
      index += 1
    return x


FAMILY = registry.family(
  "vgg",
  options={
    "dropout_rate": registry.Option(float, "Dropout inside the ConvMlp and before the head (timm's drop_rate).")
  },
  layer_groups=registry.LayerGroups(blocks=((r"^features_(\d+)/", 1),)),  # Each layer of `features`; no stem.
)
# torchvision's (and timm's) counts at 224x224 with 1000 classes: plain, then with BatchNorm.
for _depth, (_plain, _bn) in {
  11: (132_863_336, 132_868_840),
  13: (133_047_848, 133_053_736),
  16: (138_357_544, 138_365_992),
  19: (143_667_240, 143_678_248),
}.items():
  registry.register(FAMILY, f"vgg{_depth}", VGG, dict(stages=STAGES[_depth]), params=_plain)
  registry.register(FAMILY, f"vgg{_depth}_bn", VGG, dict(stages=STAGES[_depth], batch_norm=True), params=_bn)
