"""Vision Transformer (Dosovitskiy et al. 2021) with the parameter names of the public vit_jax checkpoints.

Tree (ViT-B/16): `embedding/{kernel (16,16,3,768), bias}`, `cls`, `Transformer/posembed_input/pos_embedding`,
`Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out}, LayerNorm_1,
MlpBlock_0/{Dense_0,Dense_1}}`, `Transformer/encoder_norm`, optional `pre_logits`, `MAPHead_0`, and `head`.
Options add, only when set: `registers` (1, R, D); `query_norm`/`key_norm` in every attention; `LayerScale_0/1`
in every block. `scan` stores the blocks stacked on a leading axis as `Transformer/encoderblock/...` (big_vision).
"""

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.errors import ConfigError
from vitjax.models import flexi, registry
from vitjax.models.attention import IMPLEMENTATIONS, MultiHeadDotProductAttention
from vitjax.models.layers import Classifier, Layer, forward_fields, patch_embedding
from vitjax.models.posemb import AddPositionEmbs, posemb_sincos_2d
from vitjax.models.remat import remat_block
from vitjax.models.transformer import Encoder1DBlock, LayerScale, MAPHead, MlpBlock

Array = jax.Array

__all__ = [
  "AddPositionEmbs",
  "Encoder1DBlock",
  "LayerScale",
  "MAPHead",
  "MlpBlock",
  "MultiHeadDotProductAttention",
  "VisionTransformer",
  "posemb_sincos_2d",
]

# hidden size, MLP size, heads, depth. Ti/S/B/L/H from the ViT and DeiT papers, g from "Scaling Vision
# Transformers" (Zhai et al. 2022, table 2); micro is a CIFAR-scale model for laptop runs.
VARIANTS = {
  "ti": dict(hidden_size=192, mlp_dim=768, num_heads=3, num_layers=12),
  "s": dict(hidden_size=384, mlp_dim=1536, num_heads=6, num_layers=12),
  "b": dict(hidden_size=768, mlp_dim=3072, num_heads=12, num_layers=12),
  "l": dict(hidden_size=1024, mlp_dim=4096, num_heads=16, num_layers=24),
  "h": dict(hidden_size=1280, mlp_dim=5120, num_heads=16, num_layers=32),
  "g": dict(hidden_size=1408, mlp_dim=6144, num_heads=16, num_layers=40),
  "micro": dict(hidden_size=128, mlp_dim=256, num_heads=4, num_layers=4),
}

CLASSIFIERS = ("token", "gap", "map")
POSEMBS = ("learn", "sincos2d", "rope2d")
# The sizes and regularisation an `Encoder` takes from the model that builds it.
ENCODER_SIZES = ("num_layers", "mlp_dim", "num_heads", "dropout_rate", "attention_dropout_rate", "stochastic_depth")
# The block variants an `Encoder` takes from the model, and all it passes on to each block (besides its position
# grid and dtype).
_BLOCK_CHOICES = ("qk_norm", "layerscale", "attention", "gelu_approximate")
_BLOCK_OPTIONS = (*ENCODER_SIZES[1:5], *_BLOCK_CHOICES)


class Encoder(Layer):
  """Learned position embedding (optional), registers, dropout, `num_layers` blocks, final LayerNorm.

  Drop-path rates rise linearly from 0 in the first block to `stochastic_depth` in the last. `remat` and `scan`
  change memory and compile time, not the function: the blocks rematerialised (module `remat_block`), or one
  `nn.scan` over blocks whose parameters are stacked under `encoderblock`. `final_norm` False leaves out
  `encoder_norm` (models that normalise after pooling); `qkv_bias` False drops the query/key/value biases.
  """

  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  learned_posemb: bool = True
  qk_norm: bool = False
  layerscale: float | None = None
  rope_grid: tuple[int, int] | None = None
  attention: str = "xla"
  remat: str = "none"
  scan: bool = False
  gelu_approximate: bool = True
  qkv_bias: bool = True
  final_norm: bool = True

  @nn.compact
  def __call__(
    self,
    x: Array,
    *,
    train: bool,
    registers: Array | None = None,
    num_cls: int = 0,
    posemb_grids: tuple[tuple[int, int], tuple[int, int]] | None = None,
    mask: Array | None = None,
  ) -> Array:
    """`registers` (N, R, D) go after the first `num_cls` tokens, after the position embedding (they have none);
    `posemb_grids` (stored, used) resizes the learned table to the grid in use (FlexiViT); `mask` (N, 1, 1, tokens),
    False on padding tokens, keeps every token from attending to them."""
    if self.learned_posemb:
      x = AddPositionEmbs(name="posembed_input")(x, grids=posemb_grids)
    if registers is not None:
      x = jnp.concatenate([x[:, :num_cls], registers.astype(x.dtype), x[:, num_cls:]], axis=1)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
    block = remat_block(Encoder1DBlock, self.remat, scan=self.scan)
    options = forward_fields(self, *_BLOCK_OPTIONS, "rope_grid", "qkv_bias", "dtype")
    rates = self.stochastic_depth * np.arange(self.num_layers) / max(self.num_layers - 1, 1)
    if self.scan:
      stack = nn.scan(
        _scan_body(deterministic=not train),
        variable_axes={"params": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast),
        length=self.num_layers,
      )
      rates = jnp.asarray(rates) if self.stochastic_depth else None
      x, _ = stack(block(name="encoderblock", **options), x, rates, mask)
    else:
      for i in range(self.num_layers):
        x = block(drop_path_rate=float(rates[i]), name=f"encoderblock_{i}", **options)(x, not train, None, mask)
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="encoder_norm")(x) if self.final_norm else x


def _scan_body(*, deterministic: bool) -> Callable:
  """One scan step: block `module` on the carried tokens with its own drop-path rate (None: the module's)."""

  def body(module: nn.Module, x: Array, rate: Array | None, mask: Array | None) -> tuple[Array, None]:
    return module(x, deterministic, rate, mask), None

  return body


class TransformerClassifier(Classifier):
  """The first fields of the classifiers built on `Encoder` (ViT, DeiT): classes, patch size, the sizes of
  `VARIANTS`."""

  num_classes: int | None
  patch_size: int
  hidden_size: int
  mlp_dim: int
  num_heads: int
  num_layers: int


class VisionTransformer(TransformerClassifier):
  """ViT classifier: images (N, H, W, C) -> float32 logits (N, num_classes).

  `num_classes` 0 or None drops the head and returns the pooled (pre-logits) features. `dtype` is the compute
  dtype; parameters are always float32. Sows `pre_logits` into `intermediates`. Options (all off by default):
  `num_registers` register tokens after the class token, dropped before pooling (Darcet et al. 2024);
  `qk_norm`; `posemb="rope2d"` (module `rope`); `layerscale` (initial value); `patch_sizes`, FlexiViT training:
  each training call draws one of them (uniformly, from the "dropout" rng) and resizes the patch embedding and the
  position embedding to it, while evaluation uses `patch_size`; `remat`, `scan` and `attention` (module
  `attention`'s implementations) change speed and memory only.
  """

  classifier: str = "token"
  representation_size: int | None = None
  posemb: str = "learn"
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  num_registers: int = 0
  qk_norm: bool = False
  layerscale: float | None = None
  patch_sizes: Sequence[int] | None = None
  remat: str = "none"
  scan: bool = False
  attention: str = "xla"
  gelu_approximate: bool = True  # False: the exact GELU of timm's ViTs (DeiT, AugReg in timm's layout, DINO).

  @property
  def prefix_tokens(self) -> int:
    """Tokens before the patch tokens in every block (class token, then registers): what maps of tokens skip."""
    return int(self.classifier == "token") + self.num_registers

  @property
  def readout_tokens(self) -> tuple[int, ...]:
    """The prefix tokens the head reads (the class token), or () when it pools the patch tokens (gap, map)."""
    return (0,) if self.classifier == "token" else ()

  def stem(self, images: Array, *, train: bool) -> Array:
    """Feature map that the patch embedding reads; the images themselves for a plain ViT."""
    del train
    return images

  def __call__(self, images: Array, *, train: bool) -> Array:
    self._check_options()
    if train and self.patch_sizes:
      index = jax.random.randint(self.make_rng("dropout"), (), 0, len(self.patch_sizes))
      branches = [functools.partial(_train_at_patch_size, patch=p) for p in self.patch_sizes]
      # One program for all sizes: each branch runs the whole model at its token count, sharing the parameters.
      return nn.switch(index, branches, self, images)
    return self.forward(images, patch=self.patch_size, train=train)

  @nn.compact
  def forward(self, images: Array, *, patch: int, train: bool) -> Array:
    """Logits with `patch` x `patch` patches (the stored embedding resized to it when it is not `patch_size`)."""
    feature_map = self.stem(images.astype(self.dtype), train=train)
    stored = (feature_map.shape[1] // self.patch_size, feature_map.shape[2] // self.patch_size)
    x = self._embed(feature_map, patch=patch)
    n, h, w, c = x.shape
    x = x.reshape(n, h * w, c)
    if self.posemb == "sincos2d":
      x = x + jnp.asarray(posemb_sincos_2d(height=h, width=w, dim=c), self.dtype)
    num_cls = int(self.classifier == "token")
    if num_cls:
      cls = self.param("cls", nn.initializers.zeros, (1, 1, c), jnp.float32)
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (n, 1, 1)), x], axis=1)
    registers = None
    if self.num_registers:
      # timm's `reg_token` initialisation.
      registers = self.param("registers", nn.initializers.normal(1e-6), (1, self.num_registers, c), jnp.float32)
      registers = jnp.tile(registers, (n, 1, 1))
    x = Encoder(
      **forward_fields(self, *ENCODER_SIZES, *_BLOCK_CHOICES, "remat", "scan", "dtype"),
      learned_posemb=self.posemb == "learn",
      rope_grid=(h, w) if self.posemb == "rope2d" else None,
      name="Transformer",
    )(x, train=train, registers=registers, num_cls=num_cls, posemb_grids=(stored, (h, w)) if self.patch_sizes else None)
    # Registers only carry computation: pooling sees the class token and the patch tokens.
    x = jnp.concatenate([x[:, :num_cls], x[:, num_cls + self.num_registers :]], axis=1) if self.num_registers else x
    return self._head(self._pool(x))

  def _check_options(self) -> None:
    """One line naming the bad option and the choices, before anything is built."""
    if self.classifier not in CLASSIFIERS:
      raise ConfigError(f"Unknown classifier {self.classifier!r}; choose one of: {', '.join(CLASSIFIERS)}")
    if self.posemb not in POSEMBS:
      raise ConfigError(f"Unknown posemb {self.posemb!r}; choose one of: {', '.join(POSEMBS)}")
    if self.attention not in IMPLEMENTATIONS:
      raise ConfigError(f"Unknown attention {self.attention!r}; choose one of: {', '.join(IMPLEMENTATIONS)}")
    if self.num_registers < 0:
      raise ConfigError(f"num_registers must be 0 or more, got {self.num_registers}")
    if self.patch_sizes is not None and any(int(p) < 1 for p in self.patch_sizes):
      raise ConfigError(f"patch_sizes must be positive integers, got {tuple(self.patch_sizes)}")

  def _embed(self, x: Array, *, patch: int) -> Array:
    """The public `embedding`: a p x p stride-p convolution, at `patch` x `patch` when FlexiViT is on."""
    sizes = {self.patch_size, patch, *(self.patch_sizes or ())}
    bad = sorted(p for p in sizes if x.shape[1] % p or x.shape[2] % p)
    if bad:
      raise ConfigError(f"Feature map {x.shape[1]}x{x.shape[2]} is not divisible by the patch size {bad[0]}")
    if self.patch_sizes:
      return flexi.FlexiPatchEmbedding(self.hidden_size, self.patch_size, dtype=self.dtype, name="embedding")(
        x, patch=patch
      )
    p = self.patch_size
    # Measured on CPU, XLA's convolution is as fast as a reshape + matmul for ViT-B/16 and ViT-Ti/16 training,
    # and `Conv` runs p = 1 (hybrids) as a matmul.
    return patch_embedding(self.hidden_size, p, dtype=self.dtype, name="embedding")(x)

  def _pool(self, x: Array) -> Array:
    """The encoded tokens (class token first, if any) pooled to one vector per image."""
    if self.classifier == "token":
      # A static slice: `x[:, 0]` lowers to a gather, which TFLite cannot convert once the batch is polymorphic.
      return jax.lax.index_in_dim(x, 0, axis=1, keepdims=False)
    if self.classifier == "gap":
      return jnp.mean(x, axis=1)
    return MAPHead(
      mlp_dim=self.mlp_dim, num_heads=self.num_heads, attention=self.attention, dtype=self.dtype, name="MAPHead_0"
    )(x)

  def _head(self, x: Array) -> Array:
    """Optional pre-logits layer, the sown features, and the zero-initialised classifier."""
    if self.representation_size is not None:
      x = nn.tanh(nn.Dense(self.representation_size, dtype=self.dtype, name="pre_logits")(x))
    return self.classify(x)


def _train_at_patch_size(module: VisionTransformer, images: Array, *, patch: int) -> Array:
  """A branch of FlexiViT training: the training forward pass at one patch size."""
  return module.forward(images, patch=patch, train=True)


def parse_name(name: str) -> tuple[type[nn.Module], dict[str, Any]] | None:
  """`vit_{variant}{patch}`, any patch size -> (VisionTransformer, its arguments); None for any other name."""
  match = re.fullmatch(rf"vit_({'|'.join(VARIANTS)})([1-9]\d*)", name)
  return (VisionTransformer, dict(VARIANTS[match[1]], patch_size=int(match[2]))) if match else None


OPTIONS = {
  "classifier": registry.Option(str, '"token", "gap" or "map" (attention pooling): what the head reads.'),
  "representation_size": registry.Option(int, "A tanh pre-logits layer of this width before the head."),
  "posemb": registry.Option(str, '"learn", "sincos2d" or "rope2d".'),
  "dropout_rate": registry.Option(float, "Dropout after the position embedding and in every block."),
  "attention_dropout_rate": registry.Option(float, "Dropout on the attention weights."),
  "stochastic_depth": registry.STOCHASTIC_DEPTH,
  "num_registers": registry.Option(int, "Register tokens after the class token (no position embedding)."),
  "gelu_approximate": registry.Option(bool, "tanh GELU (True, vit_jax/big_vision) or exact (False, timm)."),
  "qk_norm": registry.Option(bool, "LayerNorm on queries and keys over the head dimension."),
  "layerscale": registry.Option(float, "Per-channel residual scales starting at this value (e.g. 1e-5)."),
  "patch_sizes": registry.Option(tuple, "FlexiViT: a patch size drawn per training step; eval uses patch_size."),
  "remat": registry.Option(str, '"none", "full" or a jax.checkpoint_policies name ("dots_saveable").'),
  "scan": registry.Option(bool, "Blocks as one nn.scan, parameters stacked under Transformer/encoderblock."),
  "attention": registry.Option(str, '"xla" (jax.nn.dot_product_attention), "cudnn" (GPU) or "explicit".'),
}
# The transformer's blocks; the patch embedding, class token, registers and position embedding form the stem.
BLOCKS = (r"encoderblock_(\d+)/", 1)
STEM = r"(^|/)(embedding|cls|registers|pos_embedding|posembed_input)(/|$)"
FAMILY = registry.family(
  "vit",
  options=OPTIONS,
  layer_groups=registry.LayerGroups(blocks=(BLOCKS,), stem=STEM),
  parse=parse_name,
  parse_help=f"vit_{{variant}}{{patch}} (variants: {', '.join(VARIANTS)})",
)
# Parameter counts at 224x224 with 1000 classes: the public vit_jax models_test.py; g/14: "Scaling Vision
# Transformers" table 2 gives 1011M, here 1,011,202,432 plus the head; micro: computed here (no published count).
for _name, _params in {
  "vit_ti16": 5_717_416,
  "vit_s16": 22_050_664,
  "vit_s32": 22_878_952,
  "vit_b16": 86_567_656,
  "vit_b32": 88_224_232,
  "vit_b8": 86_576_872,
  "vit_l16": 304_326_632,
  "vit_l32": 306_535_400,
  "vit_h14": 632_045_800,
  "vit_g14": 1_012_611_432,
  "vit_micro4": 1_067_112,
  "vit_micro8": 784_488,
  "vit_micro16": 782_952,
}.items():
  registry.register(FAMILY, _name, *parse_name(_name), params=_params)
