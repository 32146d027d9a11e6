"""ConvNeXt (Liu et al. 2022) exactly as timm defines `convnext_{tiny,small,base,large}`.

Tree (timm's names with `_` for `.` inside a module): `stem_conv` (4x4, stride 4, timm's `stem.0`), `stem_norm`
(`stem.1`); stages `stages_{i}` with `downsample_norm`, `downsample_conv` (2x2, stride 2; stages 1-3, timm's
`stages.{i}.downsample.{0,1}`) and blocks `blocks_{j}`: `conv_dw` (7x7 depthwise, bias), `norm`, `mlp_fc1`,
`mlp_fc2`, `gamma` (layer scale); then `head_norm` (timm's `head.norm`) on the pooled features and `head`
(`head.fc`). Every LayerNorm has epsilon 1e-6 over channels; GELU is the exact (erf) one.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.models import registry
from vitjax.models.layers import Classifier, Conv, DropPath, Layer, gelu, patch_embedding, stage_drop_rates

Array = jax.Array
Dtype = Any

# (blocks per stage, channels per stage, drop-path rate of the paper's ImageNet-1k recipe).
VARIANTS = {
  "tiny": ((3, 3, 9, 3), (96, 192, 384, 768), 0.1),
  "small": ((3, 3, 27, 3), (96, 192, 384, 768), 0.4),
  "base": ((3, 3, 27, 3), (128, 256, 512, 1024), 0.5),
  "large": ((3, 3, 27, 3), (192, 384, 768, 1536), 0.5),
}

# timm's trunc_normal_(std=0.02) truncates at +-2 absolute, i.e. 100 standard deviations: a plain normal.
_init = nn.initializers.normal(0.02)


def variant_args(variant: str) -> dict[str, Any]:
  """Module arguments of ConvNeXt-`variant` ("tiny", "small", "base", "large")."""
  depths, dims, drop_path = VARIANTS[variant]
  return dict(depths=depths, dims=dims, stochastic_depth=drop_path)


def _layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, name=name)


class ConvNeXtBlock(Layer):
  """Depthwise 7x7 conv -> LayerNorm -> Dense 4x -> GELU -> Dense -> layer scale, plus the input."""

  drop_path: float = 0.0
  layer_scale_init: float | None = 1e-6
  train: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dim = x.shape[-1]
    dense = lambda features, name: nn.Dense(features, kernel_init=_init, dtype=self.dtype, name=name)  # noqa: E731
    y = Conv(
      dim,
      (7, 7),
      padding=((3, 3), (3, 3)),
      use_bias=True,
      feature_group_count=dim,
      kernel_init=_init,
      dtype=self.dtype,
      name="conv_dw",
    )(x)
    y = _layer_norm("norm", self.dtype)(y)
    y = dense(dim, "mlp_fc2")(gelu(dense(4 * dim, "mlp_fc1")(y)))
    if self.layer_scale_init is not None:
      y = y * self.param("gamma", nn.initializers.constant(self.layer_scale_init), (dim,), jnp.float32)
    return x + DropPath(self.drop_path)(y, deterministic=not self.train)


class ConvNeXtStage(Layer):
  """An optional downsampling (LayerNorm, 2x2 stride-2 conv) and the stage's blocks `blocks_{j}`."""

  features: int
  drop_paths: Sequence[float]
  downsample: bool
  layer_scale_init: float | None = 1e-6
  train: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.downsample:
      x = _layer_norm("downsample_norm", self.dtype)(x)
      x = patch_embedding(self.features, 2, dtype=self.dtype, name="downsample_conv", kernel_init=_init)(x)
    for j, rate in enumerate(self.drop_paths):
      x = ConvNeXtBlock(rate, self.layer_scale_init, self.train, dtype=self.dtype, name=f"blocks_{j}")(x)
    return x


class ConvNeXt(Classifier):
  """timm's ConvNeXt: images -> float32 logits.

  `stochastic_depth`: drop-path rate rising linearly from 0 at the first block to this at the last (timm);
  `layer_scale_init` the initial layer scale (None: no layer scale); `dropout_rate` before the head.
  """

  num_classes: int | None
  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  stochastic_depth: float = 0.0
  layer_scale_init: float | None = 1e-6
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Array:
    x = patch_embedding(self.dims[0], 4, dtype=self.dtype, name="stem_conv", kernel_init=_init)(
      images.astype(self.dtype)
    )
    x = _layer_norm("stem_norm", self.dtype)(x)
    rates = stage_drop_rates(self.stochastic_depth, self.depths)
    for i, dim in enumerate(self.dims):
      x = ConvNeXtStage(
        dim, tuple(rates[i]), i > 0, self.layer_scale_init, train, dtype=self.dtype, name=f"stages_{i}"
      )(x)
    x = jnp.mean(x, axis=(1, 2))
    x = _layer_norm("head_norm", self.dtype)(x).astype(jnp.float32)
    return self.classify(x, self.dropout_rate, train)


FAMILY = registry.family(
  "convnext",
  options=registry.REGULARISATION,
  layer_groups=registry.LayerGroups(blocks=((r"^stages_(\d+)/", 1),), stem=r"^(stem_conv|stem_norm)/"),
)
# timm 1.0.31's counts (convnext_*) at 224x224 with 1000 classes.
for _variant, _params in {"tiny": 28_589_128, "small": 50_223_688, "base": 88_591_464, "large": 197_767_336}.items():
  registry.register(FAMILY, f"convnext_{_variant}", ConvNeXt, variant_args(_variant), params=_params)
