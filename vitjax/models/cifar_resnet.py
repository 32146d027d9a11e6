"""The CIFAR ResNets of He et al. 2016 (section 4.2): ResNet-20, -32, -44, -56 and -110.

A 3x3 stem of 16 channels (no max-pool), three stages of n basic blocks at widths 16, 32, 64 (depth 6n + 2), global
average pooling and the classifier. Where a stage halves the resolution and doubles the width, the shortcut is
either the paper's option A (`shortcut="zero_pad"`: the identity subsampled by 2 and padded with zero channels, no
parameters) or option B (`"projection"`: a strided 1x1 convolution and BatchNorm).

Tree: `conv1`, `bn1`, `layer{1,2,3}/block{j}/{conv1,bn1,conv2,bn2[,downsample_conv,downsample_bn]}`, `head`.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.errors import ConfigError
from vitjax.models import convolution, registry, resnet
from vitjax.models.layers import BlockStack, Classifier, Conv, Layer, batch_norm

Array = jax.Array

SHORTCUTS = ("zero_pad", "projection")

# He et al.'s init (as fb.resnet.torch and torchvision): normal with variance 2 / (k * k * out channels).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def zero_pad_shortcut(x: Array, features: int, strides: int) -> Array:
  """Option A: every `strides`-th pixel, with the missing channels as zeros split evenly on both sides of the input's
  (as the widely used PyTorch reproduction, whose option-A weights therefore load unchanged)."""
  x = convolution.subsample(x, (strides, strides))
  extra = features - x.shape[-1]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class BasicBlock(Layer):
  """3x3 conv (strided) - BN - ReLU - 3x3 conv - BN, plus the shortcut, then ReLU."""

  features: int
  strides: int
  shortcut: str
  train: bool

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(Conv, kernel_init=_conv_init, dtype=self.dtype)
    norm = functools.partial(batch_norm, self.train, dtype=self.dtype)
    s, pad = (self.strides, self.strides), ((1, 1), (1, 1))
    y = nn.relu(norm(name="bn1")(conv(self.features, (3, 3), s, padding=pad, name="conv1")(x)))
    y = norm(name="bn2")(conv(self.features, (3, 3), padding=pad, name="conv2")(y))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      if self.shortcut == "projection":
        shortcut = conv(self.features, (1, 1), s, padding="VALID", name="downsample_conv")(x)
        shortcut = norm(name="downsample_bn")(shortcut)
      else:
        shortcut = zero_pad_shortcut(x, self.features, self.strides)
    return nn.relu(y + shortcut)


class CifarResNet(Classifier):
  """He et al.'s CIFAR ResNet: images -> float32 logits; any input size (global pooling).

  `stage_sizes` (n, n, n) gives depth 6n + 2; `width` is the first stage's channels, doubled per stage.
  BatchNorm: epsilon 1e-5, momentum 0.9 (torch's 0.1), statistics in `batch_stats`.
  """

  num_classes: int | None
  stage_sizes: Sequence[int] = (3, 3, 3)
  width: int = 16
  shortcut: str = "zero_pad"

  def __post_init__(self) -> None:
    if self.shortcut not in SHORTCUTS:
      raise ConfigError(f"Unknown shortcut={self.shortcut!r} for a CIFAR ResNet; use one of: {', '.join(SHORTCUTS)}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Array:
    x = Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), kernel_init=_conv_init, dtype=self.dtype, name="conv1")(
      images
    )
    x = batch_norm(train, name="bn1", dtype=self.dtype)(x)
    x = nn.relu(x)
    for i, num_blocks in enumerate(self.stage_sizes):
      strides = 1 if i == 0 else 2
      block = functools.partial(
        BasicBlock, features=self.width * 2**i, shortcut=self.shortcut, train=train, dtype=self.dtype
      )
      x = BlockStack(block, num_blocks, strides, name=f"layer{i + 1}")(x)
    x = jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
    return self.classify(x)


FAMILY = registry.family(
  "cifar_resnet",
  options={
    "width": registry.Option(int, "Channels of the first stage, doubled per stage."),
    "shortcut": registry.Option(str, '"zero_pad" (the paper\'s option A) or "projection" (option B).'),
  },
  layer_groups=resnet.TORCHVISION_GROUPS,
)
# 6n + 2 layers with 10 classes at 32x32: He et al. 2016 table 6 gives 0.27M, 0.46M, 0.66M, 0.85M and 1.7M
# (option A); exactly 432 + 32 (stem) + 650 (head) + per stage n blocks of two 3x3 convolutions and BatchNorms.
for _n, _params in {3: 269_722, 5: 464_154, 7: 658_586, 9: 853_018, 18: 1_727_962}.items():
  registry.register(
    FAMILY, f"resnet{6 * _n + 2}", CifarResNet, dict(stage_sizes=(_n,) * 3), params=_params, params_at=(32, 10)
  )
