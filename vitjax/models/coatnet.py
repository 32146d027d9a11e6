"""CoAtNet (Dai et al. 2021) as timm's `coatnet_0_224` (maxxvit.py): MBConv stages, then transformer stages.

Tree (timm's names): `stem/{conv1, norm1, conv2}`; `stages_{i}/blocks_{j}` holding, in MBConv blocks,
`shortcut/expand`, `pre_norm`, `conv1_1x1`, `norm1`, `conv2_kxk` (depthwise), `norm2`, `se/{fc1,fc2}`, `conv3_1x1`
(BatchNorm, pre-norm, exact GELU), and in transformer blocks `shortcut/expand`, `norm1`, `attn/{qkv,
rel_pos/relative_position_bias_table, proj}`, `norm2`, `mlp/{fc1,fc2}`; then `final_norm`, `pre_head` (tanh) and
`head`. The first block of each stage halves the map: the shortcut by 2x2 average pooling and a 1x1 conv, the
MBConv branch by its strided depthwise conv, the transformer branch by pooling after its first norm. Attention
spans the whole map with a relative-position bias table sized by it, so the table shape follows the input size.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import ConfigError
from vitjax.models import registry
from vitjax.models.layers import BatchNorm, Classifier, Conv, DropPath, Layer, gelu, stage_drop_rates
from vitjax.models.swin import relative_position_index

Array = jax.Array

# timm's `create_conv2d(padding='')`: symmetric (k - 1) // 2 padding, also for stride 2 (not TF's SAME).
_PAD1 = ((1, 1), (1, 1))


def avg_pool2(x: Array) -> Array:
  """2x2 average pooling with stride 2 (timm's 'avg2')."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class Stem(Layer):
  """3x3 stride-2 conv, BatchNorm + GELU, 3x3 conv (no bias, no norm after it)."""

  features: int
  train: bool

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = Conv(self.features, (3, 3), (2, 2), padding=_PAD1, dtype=self.dtype, name="conv1")(x)
    x = gelu(BatchNorm(use_running_average=not self.train, dtype=self.dtype, name="norm1")(x))
    return Conv(self.features, (3, 3), padding=_PAD1, dtype=self.dtype, name="conv2")(x)


class Downsample(Layer):
  """The shortcut of a stage's first block: 2x2 average pooling, then a 1x1 conv with bias (`expand`)."""

  features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return Conv(self.features, (1, 1), use_bias=True, dtype=self.dtype, name="expand")(avg_pool2(x))


class SqueezeExcite(Layer):
  """Channel gate: spatial mean, `fc1` to `reduced` channels, SiLU, `fc2`, sigmoid."""

  reduced: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.silu(nn.Dense(self.reduced, dtype=self.dtype, name="fc1")(s))
    return x * nn.sigmoid(nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(s))


class MBConvBlock(Layer):
  """Pre-norm inverted bottleneck: BN, 1x1 (x4), BN+GELU, depthwise 3x3, BN+GELU, SE, 1x1; residual."""

  features: int
  strides: int
  train: bool
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    norm = lambda name: BatchNorm(use_running_average=not self.train, dtype=self.dtype, name=name)
    mid = 4 * self.features
    shortcut = Downsample(self.features, dtype=self.dtype, name="shortcut")(x) if self.strides == 2 else x
    x = norm("pre_norm")(x)
    x = gelu(norm("norm1")(Conv(mid, (1, 1), dtype=self.dtype, name="conv1_1x1")(x)))
    x = nn.Conv(
      mid,
      (3, 3),
      (self.strides, self.strides),
      padding=_PAD1,
      feature_group_count=mid,
      use_bias=False,
      dtype=self.dtype,
      name="conv2_kxk",
    )(x)
    x = SqueezeExcite(self.features // 4, dtype=self.dtype, name="se")(gelu(norm("norm2")(x)))
    x = Conv(self.features, (1, 1), use_bias=True, dtype=self.dtype, name="conv3_1x1")(x)
    return shortcut + DropPath(self.drop_path_rate)(x, deterministic=not self.train)


class RelPosAttention(Layer):
  """Self-attention over all positions of the map with a learned relative-position bias per head.

  `qkv` is one Dense whose outputs are ordered (head, q/k/v, head_dim), as timm's `head_first` layout.
  """

  features: int
  dim_head: int = 32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, h, w, _ = x.shape
    heads, n = self.features // self.dim_head, h * w
    bias = RelPosBias(heads, name="rel_pos")(h, w)
    qkv = nn.Dense(3 * self.features, dtype=self.dtype, name="qkv")(x.reshape(b, n, -1))
    q, k, v = (a[..., 0, :] for a in jnp.split(qkv.reshape(b, n, heads, 3, self.dim_head), 3, axis=3))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q / jnp.asarray(np.sqrt(self.dim_head), q.dtype), k)
    weights = jax.nn.softmax(logits.astype(jnp.float32) + bias, axis=-1).astype(self.dtype)
    x = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, h, w, self.features)
    return nn.Dense(self.features, dtype=self.dtype, name="proj")(x)


class RelPosBias(nn.Module):
  """(heads, N, N) bias of an h x w map from a ((2h-1)(2w-1), heads) table, as Swin's."""

  num_heads: int

  @nn.compact
  def __call__(self, h: int, w: int) -> Array:
    table = self.param(
      "relative_position_bias_table",
      nn.initializers.truncated_normal(stddev=0.02),
      ((2 * h - 1) * (2 * w - 1), self.num_heads),
      jnp.float32,
    )
    return table[relative_position_index(h, w).reshape(-1)].reshape(h * w, h * w, -1).transpose(2, 0, 1)


class TransformerBlock(Layer):
  """Pre-norm transformer block on a 2-D map (LayerNorm eps 1e-6, exact GELU MLP of 4x width); residual."""

  features: int
  strides: int
  train: bool
  dim_head: int = 32
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)
    drop_path = lambda y: DropPath(self.drop_path_rate)(y, deterministic=not self.train)
    y = norm("norm1")(x)
    if self.strides == 2:
      x, y = Downsample(self.features, dtype=self.dtype, name="shortcut")(x), avg_pool2(y)
    x = x + drop_path(RelPosAttention(self.features, self.dim_head, dtype=self.dtype, name="attn")(y))
    return x + drop_path(Mlp(4 * self.features, dtype=self.dtype, name="mlp")(norm("norm2")(x)))


class Mlp(Layer):
  """`fc1`, exact GELU, `fc2` (timm's ConvMlp: 1x1 convs, here Dense over channels)."""

  hidden: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    y = gelu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(y)


class Stage(Layer):
  """`depth` blocks of one kind ("C": MBConv, "T": transformer); the first halves the map and sets the width."""

  features: int
  depth: int
  kind: str
  train: bool
  drop_path_rates: Sequence[float]
  dim_head: int = 32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for j in range(self.depth):
      common = dict(strides=2 if j == 0 else 1, train=self.train, drop_path_rate=self.drop_path_rates[j])
      if self.kind == "C":
        x = MBConvBlock(self.features, **common, dtype=self.dtype, name=f"blocks_{j}")(x)
      else:
        x = TransformerBlock(self.features, **common, dim_head=self.dim_head, dtype=self.dtype, name=f"blocks_{j}")(x)
    return x


class CoAtNet(Classifier):
  """CoAtNet classifier: images (N, H, W, C) -> float32 logits; pre-logits when `num_classes` is 0 or None.

  The input size must be a multiple of 32 (five halvings). `stochastic_depth` is the last block's drop-path rate,
  rising linearly from 0 over all blocks.
  """

  num_classes: int | None
  embed_dims: Sequence[int] = (96, 192, 384, 768)
  depths: Sequence[int] = (2, 3, 5, 2)
  block_types: str = "CCTT"
  stem_width: int = 64
  head_hidden_size: int = 768
  dim_head: int = 32
  dropout_rate: float = 0.0
  stochastic_depth: float = 0.0

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Array:
    if set(self.block_types) - {"C", "T"} or len(self.block_types) != len(self.depths):
      raise ValueError(f"block_types {self.block_types!r} needs one 'C' (MBConv) or 'T' (transformer) per stage")
    factor = 2 ** (len(self.depths) + 1)
    if images.shape[1] % factor or images.shape[2] % factor:
      raise ConfigError(f"CoAtNet needs an input size divisible by {factor}, got {images.shape[1]}x{images.shape[2]}")
    x = Stem(self.stem_width, train, dtype=self.dtype, name="stem")(images.astype(self.dtype))
    rates = stage_drop_rates(self.stochastic_depth, self.depths)
    for i, (features, depth, kind) in enumerate(zip(self.embed_dims, self.depths, self.block_types)):
      x = Stage(features, depth, kind, train, rates[i], self.dim_head, dtype=self.dtype, name=f"stages_{i}")(x)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="final_norm")(jnp.mean(x, axis=(1, 2)))
    x = jnp.tanh(nn.Dense(self.head_hidden_size, dtype=self.dtype, name="pre_head")(x)).astype(jnp.float32)
    return self.classify(x, self.dropout_rate, train)


FAMILY = registry.family(
  "coatnet",
  options=registry.REGULARISATION,
  layer_groups=registry.LayerGroups(blocks=((r"^stages_(\d+)/", 1),), stem=r"^stem/"),
)
registry.register(FAMILY, "coatnet_0", CoAtNet, params=25_036_820)  # timm 1.0.31's coatnet_0_224, 1000 classes.
