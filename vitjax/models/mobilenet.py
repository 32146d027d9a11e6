"""MobileNetV3 small and large (Howard et al. 2019), exactly as timm defines `mobilenetv3_{small,large}_100`.

Tree: `conv_stem`, `bn1`, blocks `blocks_{stage}_{index}` (timm's `blocks.{stage}.{index}`, see mobile_blocks;
the last stage is one 1x1 conv-bn-act), then timm's "efficient head": global average pool, `conv_head` (1x1 with
bias, no BatchNorm), hard-swish, dropout, `head` (timm's `classifier`). Squeeze-excitation reduces the expanded
channels by 4 (rounded to multiples of 8) through ReLU and gates with a hard sigmoid.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.models import efficientnet, mobile_blocks, registry
from vitjax.models.layers import Classifier
from vitjax.models.mobile_blocks import MOBILENETV3_SE

Array = jax.Array
Dtype = Any

LARGE_ARCH = (
  ("ds_r1_k3_s1_e1_c16_nre",),
  ("ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"),
  ("ir_r3_k5_s2_e3_c40_se0.25_nre",),
  ("ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"),
  ("ir_r2_k3_s1_e6_c112_se0.25",),
  ("ir_r3_k5_s2_e6_c160_se0.25",),
  ("cn_r1_k1_s1_c960",),
)

SMALL_ARCH = (
  ("ds_r1_k3_s2_e1_c16_se0.25_nre",),
  ("ir_r1_k3_s2_e4.5_c24_nre", "ir_r1_k3_s1_e3.67_c24_nre"),
  ("ir_r1_k5_s2_e4_c40_se0.25", "ir_r2_k5_s1_e6_c40_se0.25"),
  ("ir_r2_k5_s1_e3_c48_se0.25",),
  ("ir_r3_k5_s2_e6_c96_se0.25",),
  ("cn_r1_k1_s1_c576",),
)

VARIANTS = {"small": dict(arch=SMALL_ARCH, head_features=1024), "large": dict(arch=LARGE_ARCH, head_features=1280)}


class MobileNetV3(Classifier):
  """timm's MobileNetV3: images -> float32 logits; BatchNorm statistics in `batch_stats`.

  `head_features` (the width of `conv_head`) is not scaled by `width_multiplier`; the stem is, unless the
  multiplier is below 0.75 (timm). `stochastic_depth`: drop-path rate reached over the blocks as EfficientNet.
  """

  num_classes: int | None
  arch: tuple[tuple[str, ...], ...] = LARGE_ARCH
  width_multiplier: float = 1.0
  depth_multiplier: float = 1.0
  act: str = "hard_swish"
  stem_size: int = 16
  head_features: int = 1280
  dropout_rate: float = 0.2
  stochastic_depth: float = 0.0

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Array:
    stages = mobile_blocks.build_stages(
      self.arch, width_multiplier=self.width_multiplier, depth_multiplier=self.depth_multiplier
    )
    stem_size = self.stem_size
    if self.width_multiplier >= 0.75:
      stem_size = mobile_blocks.round_channels(stem_size, self.width_multiplier)
    x = mobile_blocks.stem(images, stem_size, act=self.act, train=train, dtype=self.dtype)
    x = mobile_blocks.blocks(
      x, stages, act=self.act, se=MOBILENETV3_SE, stochastic_depth=self.stochastic_depth, train=train, dtype=self.dtype
    )
    x = jnp.mean(x, axis=(1, 2), keepdims=True)
    x = mobile_blocks.conv(self.head_features, 1, use_bias=True, name="conv_head", dtype=self.dtype)(x)
    x = jnp.squeeze(mobile_blocks.ACTIVATIONS[self.act](x), (1, 2)).astype(jnp.float32)  # Not x[:, 0, 0]: a gather.
    return self.classify(x, self.dropout_rate, train)


FAMILY = registry.family("mobilenet_v3", options=efficientnet.OPTIONS, layer_groups=efficientnet.LAYER_GROUPS)
# timm 1.0.31's counts (mobilenetv3_{small,large}_100) at 224x224 with 1000 classes.
for _variant, _params in {"small": 2_542_856, "large": 5_483_032}.items():
  registry.register(FAMILY, f"mobilenet_v3_{_variant}", MobileNetV3, VARIANTS[_variant], params=_params)
