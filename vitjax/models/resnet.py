"""ResNet v1.5 with BatchNorm (torchvision's definition) and BiT's ResNetV2 (pre-activation, GroupNorm + StdConv).

ResNet v1.5 tree: `conv1`, `bn1`, `layer{1-4}/block{j}/{conv1,bn1,conv2,bn2[,conv3,bn3][,downsample_conv,
downsample_bn]}`, `head`: torchvision's `layer1.0.conv1.weight` is `layer1/block0/conv1/kernel` (OIHW -> HWIO).

BiT tree, the public BiT `.npz` names without their `resnet/` prefix: `root_block/standardized_conv2d`,
`block{1-4}/unit{01..}/{a,b,c}/{group_norm,standardized_conv2d}`, `.../a/proj/standardized_conv2d`,
`group_norm`, `head/conv2d`. GroupNorm `gamma`/`beta` are Flax's `scale`/`bias`.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.models import registry
from vitjax.models.layers import BlockStack, Classifier, Conv, Layer, batch_norm, standardize_kernel
from vitjax.models.pooling import max_pool

Array = jax.Array
Dtype = Any

# Blocks per stage for each depth; 18 and 34 use basic blocks, the others bottlenecks.
STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

# torchvision's init: He normal over fan-out for every convolution.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pad(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric padding of (k - 1) // 2 as torch and BiT use (not XLA's asymmetric SAME when strided)."""
  p = (kernel_size - 1) // 2
  return ((p, p), (p, p))


class ResNetBlock(Layer):
  """Basic (two 3x3) or bottleneck (1x1, strided 3x3, 1x1 expanding 4x) post-activation block."""

  features: int
  strides: int = 1
  bottleneck: bool = True
  zero_init_last_bn: bool = False
  train: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(Conv, kernel_init=_conv_init, dtype=self.dtype)
    norm = functools.partial(batch_norm, self.train, dtype=self.dtype)
    s = (self.strides, self.strides)
    if self.bottleneck:
      out_features = 4 * self.features
      specs = [(self.features, 1, (1, 1)), (self.features, 3, s), (out_features, 1, (1, 1))]
    else:
      out_features = self.features
      specs = [(self.features, 3, s), (self.features, 3, (1, 1))]
    y = x
    for i, (features, k, strides) in enumerate(specs, 1):
      y = conv(features, (k, k), strides, padding=_pad(k), name=f"conv{i}")(y)
      last = i == len(specs)
      scale_init = nn.initializers.zeros if last and self.zero_init_last_bn else nn.initializers.ones
      y = norm(scale_init=scale_init, name=f"bn{i}")(y)
      if not last:
        y = nn.relu(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != out_features:
      shortcut = conv(out_features, (1, 1), s, padding=_pad(1), name="downsample_conv")(x)
      shortcut = norm(name="downsample_bn")(shortcut)
    return nn.relu(y + shortcut)


class ResNet(Classifier):
  """ResNet v1.5 (He et al. 2016, stride in the 3x3 conv): images -> float32 logits.

  BatchNorm momentum 0.9 (torch's 0.1), epsilon 1e-5, statistics in `batch_stats`.
  `zero_init_last_bn` starts each residual branch at zero (Goyal et al. 2017).
  """

  num_classes: int | None
  stage_sizes: Sequence[int]
  bottleneck: bool = True
  width: int = 64
  zero_init_last_bn: bool = False

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Array:
    x = Conv(self.width, (7, 7), (2, 2), padding=_pad(7), kernel_init=_conv_init, dtype=self.dtype, name="conv1")(
      images
    )
    x = batch_norm(train, name="bn1", dtype=self.dtype)(x)
    x = nn.relu(x)
    x = max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
    for i, num_blocks in enumerate(self.stage_sizes):
      block = functools.partial(
        ResNetBlock,
        features=self.width * 2**i,
        bottleneck=self.bottleneck,
        zero_init_last_bn=self.zero_init_last_bn,
        train=train,
        dtype=self.dtype,
      )
      x = BlockStack(block, num_blocks, 1 if i == 0 else 2, name=f"layer{i + 1}")(x)
    x = jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
    return self.classify(x)


# The BiT code standardises with epsilon 1e-10 inside the square root (bit_tf2 `StandardizedConv2D`,
# big_vision `bit_paper.StdConv`).
bit_standardize = functools.partial(standardize_kernel, eps=1e-10, eps_on_std=False)


def _bit_group_norm(dtype: Dtype) -> nn.GroupNorm:
  """BiT's GroupNorm: 32 groups, epsilon 1e-5, two-pass variance as its `tf.nn.moments`."""
  return nn.GroupNorm(num_groups=32, epsilon=1e-5, use_fast_variance=False, dtype=dtype, name="group_norm")


def _std_conv(features: int, kernel_size: int, strides: int, dtype: Dtype) -> Conv:
  """BiT's weight-standardised convolution, under its TF name `standardized_conv2d`."""
  k, s = kernel_size, strides
  return Conv(
    features, (k, k), (s, s), padding=_pad(k), standardize=bit_standardize, dtype=dtype, name="standardized_conv2d"
  )


class _StdConvScope(Layer):
  """A lone weight-standardised conv under BiT's scope names (`root_block`, `proj`)."""

  features: int
  kernel_size: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _std_conv(self.features, self.kernel_size, self.strides, self.dtype)(x)


class _PreActConv(Layer):
  """GroupNorm -> ReLU -> StdConv: one of a BiT unit's `a`, `b`, `c`.

  With `project_features`, also returns the shortcut projected (1x1, `project_strides`) from the
  activated input (`a/proj`).
  """

  features: int
  kernel_size: int
  strides: int = 1
  project_features: int | None = None
  project_strides: int = 1

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array | None]:
    x = nn.relu(_bit_group_norm(self.dtype)(x))
    shortcut = None
    if self.project_features:
      shortcut = _StdConvScope(self.project_features, 1, self.project_strides, dtype=self.dtype, name="proj")(x)
    y = _std_conv(self.features, self.kernel_size, self.strides, self.dtype)(x)
    return y, shortcut


class BottleneckV2Unit(Layer):
  """Pre-activation bottleneck; the stride sits in the 3x3 conv (`b`) and the projection."""

  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out = 4 * self.features
    needs_proj = self.strides != 1 or x.shape[-1] != out
    y, shortcut = _PreActConv(
      self.features,
      1,
      project_features=out if needs_proj else None,
      project_strides=self.strides,
      dtype=self.dtype,
      name="a",
    )(x)
    y, _ = _PreActConv(self.features, 3, self.strides, dtype=self.dtype, name="b")(y)
    y, _ = _PreActConv(out, 1, dtype=self.dtype, name="c")(y)
    return y + (x if shortcut is None else shortcut)


class BiTResNet(Classifier):
  """BiT ResNetV2 (Kolesnikov et al. 2020): images in [-1, 1] -> float32 logits.

  The root max-pool pads with zeros, as BiT's `tf.pad` + VALID pool (big_vision's port pads with -inf;
  they differ only on border windows whose values are all negative).
  """

  num_classes: int | None
  stage_sizes: Sequence[int]
  width_factor: int = 1

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Array:
    del train  # GroupNorm only: nothing differs between training and evaluation.
    width = 64 * self.width_factor
    x = _StdConvScope(width, 7, 2, dtype=self.dtype, name="root_block")(images.astype(self.dtype))
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    x = max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    for i, num_units in enumerate(self.stage_sizes):
      unit = functools.partial(BottleneckV2Unit, width * 2**i, dtype=self.dtype)
      x = BlockStack(unit, num_units, 1 if i == 0 else 2, "unit{:02d}", 1, name=f"block{i + 1}")(x)
    x = nn.relu(_bit_group_norm(self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2))
    return self.classify(x, head=self._head)

  def _head(self, features: Array) -> Array:
    """BiT's classifier: a 1x1 convolution (`head/conv2d`) on the pooled features."""
    return jnp.squeeze(_BiTHead(self.num_classes, self.head_bias_init, name="head")(features[:, None, None]), (1, 2))


class _BiTHead(nn.Module):
  """Zero-initialised 1x1 conv with bias (`head/conv2d`, kernel (1, 1, C, classes)) on pooled features."""

  num_classes: int
  bias_init: float = 0.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return Conv(
      self.num_classes,
      (1, 1),
      use_bias=True,
      kernel_init=nn.initializers.zeros,
      bias_init=nn.initializers.constant(self.bias_init),
      name="conv2d",
    )(x)


# torchvision's names: stages `layer{1-4}`, stem `conv1` and `bn1`.
TORCHVISION_GROUPS = registry.LayerGroups(blocks=((r"^layer(\d+)/", 0),), stem=r"^(conv1|bn1)/")
RESNET = registry.family(
  "resnet",
  options={
    "width": registry.Option(int, "Channels of the stem, doubled per stage."),
    "zero_init_last_bn": registry.Option(bool, "Every residual branch starts at zero."),
  },
  layer_groups=TORCHVISION_GROUPS,
)
# torchvision's counts at 224x224 with 1000 classes.
for _depth, _params in {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}.items():
  registry.register(
    RESNET, f"resnet{_depth}", ResNet, dict(stage_sizes=STAGE_SIZES[_depth], bottleneck=_depth >= 50), params=_params
  )
BIT = registry.family(
  "bit", layer_groups=registry.LayerGroups(blocks=((r"^block(\d+)/", 0),), stem=r"(^|/)root_block(/|$)")
)
# Computed here; R50x1, R101x1, R50x3, R101x3 and R152x4 agree with timm's ports of the BiT weights
# (resnetv2_*_bit, 25.5M / 44.5M / 217.3M / 387.9M / 936.5M). R152x2 has no independent count.
for (_depth, _width), _params in {
  (50, 1): 25_549_352,
  (101, 1): 44_541_480,
  (50, 3): 217_319_080,
  (101, 3): 387_934_888,
  (152, 2): 236_335_208,
  (152, 4): 936_533_224,
}.items():
  _kwargs = dict(stage_sizes=STAGE_SIZES[_depth], width_factor=_width)
  registry.register(BIT, f"bit_r{_depth}x{_width}", BiTResNet, _kwargs, params=_params)
