"""EfficientNet B0-B7 (Tan & Le 2019) and MobileNetV2 (Sandler et al. 2018), exactly as timm defines
`efficientnet_b{0-7}` and `mobilenetv2_100`: symmetric PyTorch padding, BatchNorm epsilon 1e-5.

Both are timm's `EfficientNet` trunk: `conv_stem`, `bn1`, blocks `blocks_{stage}_{index}` (timm's
`blocks.{stage}.{index}`, see mobile_blocks), `conv_head`, `bn2`, global average pool, dropout, `head` (timm's
`classifier`). B1-B7 scale one definition: channels times the width multiplier rounded to multiples of 8, the
blocks of each stage times the depth multiplier rounded up.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.models import mobile_blocks, registry
from vitjax.models.layers import Classifier
from vitjax.models.mobile_blocks import EFFICIENTNET_SE, SqueezeExciteStyle

Array = jax.Array
Dtype = Any

EFFICIENTNET_ARCH = (
  ("ds_r1_k3_s1_e1_c16_se0.25",),
  ("ir_r2_k3_s2_e6_c24_se0.25",),
  ("ir_r2_k5_s2_e6_c40_se0.25",),
  ("ir_r3_k3_s2_e6_c80_se0.25",),
  ("ir_r3_k5_s1_e6_c112_se0.25",),
  ("ir_r4_k5_s2_e6_c192_se0.25",),
  ("ir_r1_k3_s1_e6_c320_se0.25",),
)

MOBILENETV2_ARCH = (
  ("ds_r1_k3_s1_c16",),
  ("ir_r2_k3_s2_e6_c24",),
  ("ir_r3_k3_s2_e6_c32",),
  ("ir_r4_k3_s2_e6_c64",),
  ("ir_r3_k3_s1_e6_c96",),
  ("ir_r3_k3_s2_e6_c160",),
  ("ir_r1_k3_s1_e6_c320",),
)

# EfficientNet compound scaling: (width multiplier, depth multiplier, training resolution, dropout before the head).
VARIANTS = {
  "b0": (1.0, 1.0, 224, 0.2),
  "b1": (1.0, 1.1, 240, 0.2),
  "b2": (1.1, 1.2, 260, 0.3),
  "b3": (1.2, 1.4, 300, 0.3),
  "b4": (1.4, 1.8, 380, 0.4),
  "b5": (1.6, 2.2, 456, 0.4),
  "b6": (1.8, 2.6, 528, 0.5),
  "b7": (2.0, 3.1, 600, 0.5),
}


def variant_args(variant: str) -> dict[str, Any]:
  """Module arguments of EfficientNet-`variant` ("b0" ... "b7")."""
  width, depth, _, dropout = VARIANTS[variant]
  return dict(width_multiplier=width, depth_multiplier=depth, dropout_rate=dropout)


# MobileNetV2 in timm: ReLU6, no squeeze-excitation, a head never narrower than 1280 channels.
MOBILENETV2_ARGS = dict(arch=MOBILENETV2_ARCH, act="relu6", narrow_head=False, dropout_rate=0.2, stochastic_depth=0.0)


class EfficientNet(Classifier):
  """timm's EfficientNet trunk: images -> float32 logits; BatchNorm statistics in `batch_stats`.

  `stochastic_depth` is the drop-path rate the schedule rises to over the blocks (timm's recipes train with 0.2);
  `dropout_rate` drops pooled features before the head. `narrow_head` False keeps `conv_head` at least
  `head_features` wide under a width multiplier below 1 (MobileNetV2).
  """

  num_classes: int | None
  arch: tuple[tuple[str, ...], ...] = EFFICIENTNET_ARCH
  width_multiplier: float = 1.0
  depth_multiplier: float = 1.0
  act: str = "swish"
  se: SqueezeExciteStyle = EFFICIENTNET_SE
  stem_size: int = 32
  head_features: int = 1280
  narrow_head: bool = True
  dropout_rate: float = 0.2
  stochastic_depth: float = 0.2

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Array:
    round_width = lambda c: mobile_blocks.round_channels(c, self.width_multiplier)  # noqa: E731
    stages = mobile_blocks.build_stages(
      self.arch, width_multiplier=self.width_multiplier, depth_multiplier=self.depth_multiplier
    )
    x = mobile_blocks.stem(images, round_width(self.stem_size), act=self.act, train=train, dtype=self.dtype)
    x = mobile_blocks.blocks(
      x, stages, act=self.act, se=self.se, stochastic_depth=self.stochastic_depth, train=train, dtype=self.dtype
    )
    features = round_width(self.head_features)
    if not self.narrow_head:
      features = max(features, self.head_features)
    x = mobile_blocks.conv(features, 1, name="conv_head", dtype=self.dtype)(x)
    x = mobile_blocks.ACTIVATIONS[self.act](mobile_blocks.batch_norm(train, name="bn2", dtype=self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
    return self.classify(x, self.dropout_rate, train)


# Stages `blocks_{stage}_{block}`; stem `conv_stem`/`bn1` (timm's names, MobileNetV3's too).
LAYER_GROUPS = registry.LayerGroups(blocks=((r"^blocks_(\d+)_\d+/", 1),), stem=r"^(conv_stem|bn1)/")
OPTIONS = registry.REGULARISATION
FAMILY = registry.family("efficientnet", options=OPTIONS, layer_groups=LAYER_GROUPS)
# timm 1.0.31's counts (efficientnet_b*, mobilenetv2_100) at 224x224 with 1000 classes.
for _variant, _params in {
  "b0": 5_288_548,
  "b1": 7_794_184,
  "b2": 9_109_994,
  "b3": 12_233_232,
  "b4": 19_341_616,
  "b5": 30_389_784,
  "b6": 43_040_704,
  "b7": 66_347_960,
}.items():
  registry.register(FAMILY, f"efficientnet_{_variant}", EfficientNet, variant_args(_variant), params=_params)
registry.register(FAMILY, "mobilenet_v2", EfficientNet, MOBILENETV2_ARGS, params=3_504_872)
