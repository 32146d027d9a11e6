"""Hybrid ViT (Dosovitskiy et al. 2021, section 3.1): a ResNet v1 (GroupNorm + StdConv) stem feeding a ViT.

Tree as the public vit_jax R50+ViT checkpoints: `conv_root`, `gn_root`, `block{1,2,..}/unit{i}/{conv1,conv2,conv3,
conv_proj,gn1,gn2,gn3,gn_proj}`, then the ViT's `embedding` (a p x p patch projection on the feature map) and
the rest of the ViT tree.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from vitjax.models import registry, vit
from vitjax.models.layers import BlockStack, Conv, Layer, standardize_kernel
from vitjax.models.pooling import max_pool
from vitjax.models.vit import VisionTransformer

Array = jax.Array
Dtype = Any

# vit_jax's `weight_standardize` divides by (std + 1e-5), epsilon outside the square root.
vit_standardize = functools.partial(standardize_kernel, eps=1e-5, eps_on_std=True)


def _group_norm(*, name: str, dtype: Dtype, zero_scale: bool = False) -> nn.GroupNorm:
  """vit_jax's `nn.GroupNorm()`: 32 groups, Flax's default epsilon 1e-6."""
  scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  return nn.GroupNorm(num_groups=32, epsilon=1e-6, scale_init=scale_init, dtype=dtype, name=name)


class ResidualUnit(Layer):
  """Post-activation bottleneck (stride in the 3x3 conv); the last GroupNorm starts at zero scale."""

  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(Conv, standardize=vit_standardize, dtype=self.dtype)
    s = (self.strides, self.strides)
    out = 4 * self.features
    residual = x
    if x.shape[-1] != out or self.strides != 1:
      residual = conv(out, (1, 1), s, name="conv_proj")(x)
      residual = _group_norm(name="gn_proj", dtype=self.dtype)(residual)
    y = conv(self.features, (1, 1), name="conv1")(x)
    y = nn.relu(_group_norm(name="gn1", dtype=self.dtype)(y))
    y = conv(self.features, (3, 3), s, name="conv2")(y)
    y = nn.relu(_group_norm(name="gn2", dtype=self.dtype)(y))
    y = conv(out, (1, 1), name="conv3")(y)
    y = _group_norm(name="gn3", dtype=self.dtype, zero_scale=True)(y)
    return nn.relu(residual + y)


class HybridVisionTransformer(VisionTransformer):
  """ViT whose patches come from a ResNet feature map: root (7x7/2 conv, GN, 3x3/2 max-pool) + stages.

  `resnet_stages` () keeps only the root (R+ViT-Ti/16: /4 root, then 8x8 patches).
  """

  resnet_stages: Sequence[int] = ()
  resnet_width_factor: int = 1

  def stem(self, images: Array, *, train: bool) -> Array:
    del train  # GroupNorm only.
    width = 64 * self.resnet_width_factor
    x = Conv(width, (7, 7), (2, 2), standardize=vit_standardize, dtype=self.dtype, name="conv_root")(images)
    x = nn.relu(_group_norm(name="gn_root", dtype=self.dtype)(x))
    x = max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for i, num_units in enumerate(self.resnet_stages):
      unit = functools.partial(ResidualUnit, width * 2**i, dtype=self.dtype)
      x = BlockStack(unit, num_units, 1 if i == 0 else 2, "unit{}", 1, name=f"block{i + 1}")(x)
    return x


# The ViT's groups, and the ResNet's root (stem) and stages `block{1,2,..}` (depths overlapping the transformer's).
FAMILY = registry.family(
  "hybrid",
  options=vit.OPTIONS,
  layer_groups=registry.LayerGroups(
    blocks=(vit.BLOCKS, (r"^block(\d+)/", 0)), stem=rf"{vit.STEM}|(^|/)(conv_root|gn_root)(/|$)"
  ),
)


def _arguments(variant: str, *, patch_size: int, resnet_stages: tuple[int, ...]) -> dict[str, Any]:
  """Arguments of a hybrid as vit_jax's configs: the ResNet's strides times `patch_size` give the /16 or /32."""
  return dict(vit.VARIANTS[variant], patch_size=patch_size, resnet_stages=resnet_stages)


# The public vit_jax models_test.py, at 224x224 with 1000 classes.
for _name, _args, _params in (
  ("r50_vit_b16", _arguments("b", patch_size=1, resnet_stages=(3, 4, 9)), 98_659_112),
  ("r50_vit_l32", _arguments("l", patch_size=1, resnet_stages=(3, 4, 6, 3)), 328_994_856),
  ("r26_vit_s32", _arguments("s", patch_size=1, resnet_stages=(2, 2, 2, 2)), 36_431_912),
  ("r_vit_ti16", _arguments("ti", patch_size=8, resnet_stages=()), 6_337_704),
):
  registry.register(FAMILY, _name, HybridVisionTransformer, _args, params=_params)
