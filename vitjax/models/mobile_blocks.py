"""Blocks of the EfficientNet / MobileNet family as timm defines them: block strings, channel rounding, and the
depthwise-separable, inverted-residual (MBConv) and conv-bn-act blocks with squeeze-excitation.

Architectures are written in timm's block strings (`ir_r2_k5_s2_e6_c40_se0.25_nre`: block type `ds`/`ir`/`cn`,
repeats, kernel, stride, expansion, output channels, squeeze-excitation ratio, `nre`/`nhs`/... activation override),
so each family reads as timm's `_gen_*` function. A block's variables: `conv_pw`, `bn1`, `conv_dw`, `bn2`,
`se/{conv_reduce,conv_expand}`, `conv_pwl`, `bn3` (inverted residual); `conv_dw`, `bn1`, `se`, `conv_pw`, `bn2`
(depthwise-separable); `conv`, `bn1` (conv-bn-act): timm's module names.
"""

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.models.layers import Conv, DropPath, Layer, batch_norm

Array = jax.Array
Dtype = Any

ACTIVATIONS = {
  "relu": nn.relu,
  "relu6": jax.nn.relu6,
  "swish": nn.silu,
  "hard_swish": jax.nn.hard_swish,
  "hard_sigmoid": jax.nn.hard_sigmoid,
  "sigmoid": nn.sigmoid,
}
_ACTIVATION_CODES = {"re": "relu", "r6": "relu6", "hs": "hard_swish", "sw": "swish"}

# timm's EfficientNet init: normal with variance 2 / fan-out, fan-out counted per group (depthwise: kh * kw).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_depthwise_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal", in_axis=-1, out_axis=-2)


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
  """The nearest multiple of `divisor` (at least `divisor`), one step up if rounding lost more than 10%."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < round_limit * value else rounded


def round_channels(channels: int, multiplier: float, divisor: int = 8) -> int:
  """Channels scaled by a width multiplier, rounded to a multiple of `divisor` (timm's `round_channels`)."""
  return make_divisible(channels * multiplier, divisor) if multiplier else channels


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One block: `kind` "ds" (depthwise-separable), "ir" (inverted residual) or "cn" (conv-bn-act)."""

  kind: str
  out_channels: int
  kernel_size: int
  stride: int
  exp_ratio: float = 1.0
  se_ratio: float = 0.0
  act: str | None = None  # None: the model's activation.
  noskip: bool = False


def decode_block(text: str) -> tuple[BlockSpec, int]:
  """A timm block string as (spec, repeats); the depthwise-separable block has no expansion (ratio 1)."""
  kind, *ops = text.split("_")
  options: dict[str, str] = {}
  for op in ops:
    if op.startswith("n") and op != "noskip":
      options["n"] = op[1:]
    elif op != "noskip":
      key, value = re.split(r"(\d.*)", op)[:2]
      options[key] = value
  if kind not in ("ds", "ir", "cn"):
    raise ValueError(f"Unknown block type {kind!r} in {text!r}; choose ds, ir or cn.")
  spec = BlockSpec(
    kind=kind,
    out_channels=int(options["c"]),
    kernel_size=int(options["k"]),
    stride=int(options["s"]),
    exp_ratio=float(options["e"]) if kind == "ir" else 1.0,
    se_ratio=float(options.get("se", 0.0)),
    act=_ACTIVATION_CODES.get(options["n"]) if "n" in options else None,
    noskip="noskip" in ops,
  )
  return spec, int(options["r"])


def scale_depth(specs: Sequence[BlockSpec], repeats: Sequence[int], multiplier: float) -> list[BlockSpec]:
  """A stage's blocks with the total repeats times `multiplier`, rounded up, shared out from the last spec back."""
  remaining, remaining_scaled = sum(repeats), math.ceil(sum(repeats) * multiplier)
  scaled = []
  for r in reversed(repeats):
    count = max(1, round(r / remaining * remaining_scaled))
    scaled.append(count)
    remaining, remaining_scaled = remaining - r, remaining_scaled - count
  return [spec for spec, count in zip(specs, reversed(scaled)) for _ in range(count)]


def build_stages(
  arch: Sequence[Sequence[str]], *, width_multiplier: float, depth_multiplier: float
) -> list[list[BlockSpec]]:
  """Every block of every stage: depth and width scaled, the stride kept on a stage's first block only."""
  stages = []
  for stage in arch:
    specs, repeats = zip(*map(decode_block, stage))
    blocks = scale_depth(specs, repeats, depth_multiplier)
    stages.append(
      [
        dataclasses.replace(
          spec, out_channels=round_channels(spec.out_channels, width_multiplier), stride=spec.stride if j == 0 else 1
        )
        for j, spec in enumerate(blocks)
      ]
    )
  return stages


@dataclasses.dataclass(frozen=True)
class SqueezeExciteStyle:
  """How a family sizes and gates squeeze-excitation.

  `from_expansion`: the ratio applies to the expanded channels (MobileNetV3) rather than to the block input
  (EfficientNet); `divisible`: reduced channels rounded to a multiple of 8 (MobileNetV3) or to the nearest integer.
  `act` None uses the block's activation.
  """

  gate: str
  act: str | None
  divisible: bool
  from_expansion: bool

  def reduced_channels(self, channels: int, spec: BlockSpec) -> int:
    """Width of the squeeze for an excitation over `channels` (the block's depthwise output)."""
    ratio = spec.se_ratio if self.from_expansion else spec.se_ratio / spec.exp_ratio
    return make_divisible(channels * ratio) if self.divisible else round(channels * ratio)


EFFICIENTNET_SE = SqueezeExciteStyle(gate="sigmoid", act=None, divisible=False, from_expansion=False)
MOBILENETV3_SE = SqueezeExciteStyle(gate="hard_sigmoid", act="relu", divisible=True, from_expansion=True)


def _pad(kernel_size: int, stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """timm's symmetric PyTorch padding ((stride - 1) + (k - 1)) // 2 (not XLA's asymmetric SAME)."""
  p = ((stride - 1) + (kernel_size - 1)) // 2
  return ((p, p), (p, p))


def conv(
  features: int, kernel_size: int, stride: int = 1, *, name: str, dtype: Dtype, groups: int = 1, use_bias: bool = False
) -> Conv:
  """A convolution with timm's padding and initialisation (`groups` = channels: depthwise)."""
  return Conv(
    features,
    (kernel_size, kernel_size),
    (stride, stride),
    padding=_pad(kernel_size, stride),
    feature_group_count=groups,
    use_bias=use_bias,
    kernel_init=_depthwise_init if groups > 1 else _conv_init,
    dtype=dtype,
    name=name,
  )


class SqueezeExcite(Layer):
  """Global average -> 1x1 conv (reduce) -> activation -> 1x1 conv (expand) -> gate, scaling each channel."""

  reduced: int
  act: str
  gate: str

  @nn.compact
  def __call__(self, x: Array) -> Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = conv(self.reduced, 1, use_bias=True, name="conv_reduce", dtype=self.dtype)(s)
    s = conv(x.shape[-1], 1, use_bias=True, name="conv_expand", dtype=self.dtype)(ACTIVATIONS[self.act](s))
    return x * ACTIVATIONS[self.gate](s)


class MobileBlock(Layer):
  """One block of `spec`: depthwise-separable, inverted residual (MBConv) or conv-bn-act.

  A residual connection (behind stochastic depth at `drop_path`) joins blocks that keep shape, unless `noskip`;
  conv-bn-act blocks never have one.
  """

  spec: BlockSpec
  act: str
  se: SqueezeExciteStyle
  drop_path: float = 0.0
  train: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    spec, act = self.spec, ACTIVATIONS[self.act]
    norm = lambda name: batch_norm(self.train, name=name, dtype=self.dtype)  # noqa: E731
    if spec.kind == "cn":
      return act(norm("bn1")(conv(spec.out_channels, spec.kernel_size, spec.stride, name="conv", dtype=self.dtype)(x)))
    y, names = x, ("conv_dw", "bn1", "conv_pw", "bn2")
    if spec.kind == "ir":
      mid = make_divisible(x.shape[-1] * spec.exp_ratio)
      y = act(norm("bn1")(conv(mid, 1, name="conv_pw", dtype=self.dtype)(y)))
      names = ("conv_dw", "bn2", "conv_pwl", "bn3")
    channels = y.shape[-1]
    y = conv(channels, spec.kernel_size, spec.stride, groups=channels, name=names[0], dtype=self.dtype)(y)
    y = act(norm(names[1])(y))
    if spec.se_ratio:
      reduced = self.se.reduced_channels(channels, spec)
      y = SqueezeExcite(reduced, self.se.act or self.act, self.se.gate, dtype=self.dtype, name="se")(y)
    y = norm(names[3])(conv(spec.out_channels, 1, name=names[2], dtype=self.dtype)(y))
    if spec.stride == 1 and x.shape[-1] == spec.out_channels and not spec.noskip:
      y = DropPath(self.drop_path)(y, deterministic=not self.train) + x
    return y


def stem(x: Array, features: int, *, act: str, train: bool, dtype: Dtype) -> Array:
  """`conv_stem` (3x3, stride 2) -> `bn1` -> activation, in the calling module."""
  x = conv(features, 3, 2, name="conv_stem", dtype=dtype)(x.astype(dtype))
  return ACTIVATIONS[act](batch_norm(train, name="bn1", dtype=dtype)(x))


def blocks(
  x: Array,
  stages: Sequence[Sequence[BlockSpec]],
  *,
  act: str,
  se: SqueezeExciteStyle,
  stochastic_depth: float,
  train: bool,
  dtype: Dtype,
) -> Array:
  """All blocks as `blocks_{stage}_{index}` of the calling module; block k of n drops its branch at
  `stochastic_depth * k / n` (timm's schedule: the first block never, the last just under the rate)."""
  total = sum(len(stage) for stage in stages)
  k = 0
  for i, stage in enumerate(stages):
    for j, spec in enumerate(stage):
      x = MobileBlock(
        spec,
        spec.act or act,
        se,
        drop_path=stochastic_depth * k / total,
        train=train,
        dtype=dtype,
        name=f"blocks_{i}_{j}",
      )(x)
      k += 1
  return x
