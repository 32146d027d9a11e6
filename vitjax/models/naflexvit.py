"""NaFlex ViT (NaViT + FlexiViT, SigLIP 2; timm's `naflexvit_*`): images at their native aspect ratio as a
variable number of patches, padded to a fixed sequence length.

Input: an image batch (N, H, W, C), patchified here into its full grid; or a mapping with timm's collator keys:
  `patches` (N, L, P*P*C), each patch flattened in (row, column, channel) order,
  `patch_coord` (N, L, 2) int (row, column) of each patch in its image's patch grid,
  `patch_valid` (N, L) bool, False on padding (whose coordinates are (0, 0));
or the same packed as one float array (N, L, P*P*C + 3), patches then row, column and validity: what the `patchify`
preprocessing op writes (vitjax/data/patches.py), so that a NaFlex batch travels like any image batch.
An image's grid (h, w) is one plus the largest valid coordinate; the learned (gh, gw) position table is resampled to
it per image, as torch's `F.interpolate(..., antialias=True, align_corners=False)` resamples it (bicubic by default,
or bilinear), or, with `posemb_keep_aspect`, to (max(h, w),) * 2 and cropped. The factorised variant keeps a
(gh, D) row table and a (gw, D) column table, each resampled linearly (no antialiasing) and summed. Attention keys,
gap and map pooling all ignore padding, so padding changes no logit.

Tree (big_vision's NaFlex names): `embedding/{kernel (P*P*C, D), bias}`, `pos_embedding` (gh, gw, D) or
`pos_embedding_y` (gh, D) and `pos_embedding_x` (gw, D), `cls` (token pooling), `registers` (1, R, D),
`Transformer/encoderblock_{i}/...` as the ViT's, `Transformer/encoder_norm` or, with `fc_norm`, `fc_norm` after
pooling, `MAPHead_0`, `head`.
"""

import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.errors import ConfigError
from vitjax.models import registry, vit
from vitjax.models.layers import check_patch_size, forward_fields
from vitjax.models.transformer import MAPHead

Array = jax.Array

POSEMBS = ("learn", "factorized")
INTERPOLATIONS = {"bilinear": 2, "bicubic": 4}  # Taps of each filter at scale 1 (torch's interp_size).


def _filter(x: Array, taps: int) -> Array:
  """torch's antialiasing filters: the triangle (bilinear) and Keys' cubic with a = -0.5 (bicubic, as PIL)."""
  x = jnp.abs(x)
  if taps == 2:
    return jnp.maximum(1.0 - x, 0.0)
  a = -0.5
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return jnp.where(x < 1, near, jnp.where(x < 2, far, 0.0))


def antialias_weights(index: Array, out_size: Array, in_size: int, interpolation: str = "bicubic") -> Array:
  """(..., in_size) weights of output `index` when torch's antialiased `F.interpolate` (align_corners=False)
  resamples `in_size` samples to `out_size` (both traced, any shape): PIL's support-scaled filter, clipped to the
  input and renormalised."""
  taps = INTERPOLATIONS[interpolation]
  scale = in_size / out_size.astype(jnp.float32)
  support = jnp.where(scale >= 1, taps / 2 * scale, taps / 2)
  center = scale * (index.astype(jnp.float32) + 0.5)
  low = jnp.maximum(jnp.floor(center - support + 0.5), 0.0)
  high = jnp.minimum(jnp.floor(center + support + 0.5), in_size)
  high = jnp.minimum(high, low + jnp.ceil(support) * 2 + 1)
  j = jnp.arange(in_size, dtype=jnp.float32)
  inside = (j >= low[..., None]) & (j < high[..., None])
  invscale = jnp.where(scale >= 1, 1 / scale, 1.0)
  w = jnp.where(inside, _filter((j - center[..., None] + 0.5) * invscale[..., None], taps), 0.0)
  return w / jnp.sum(w, axis=-1, keepdims=True)


def linear_weights(index: Array, out_size: Array, in_size: int) -> Array:
  """(..., in_size) weights of output `index` in torch's `F.interpolate(mode="linear", align_corners=False)` from
  `in_size` to `out_size` samples (no antialiasing)."""
  source = jnp.maximum(in_size / out_size.astype(jnp.float32) * (index.astype(jnp.float32) + 0.5) - 0.5, 0.0)
  low = jnp.minimum(jnp.floor(source), in_size - 1)
  frac = jnp.clip(source - low, 0.0, 1.0)
  high = jnp.minimum(low + 1, in_size - 1)
  j = jnp.arange(in_size, dtype=jnp.float32)
  return (1 - frac)[..., None] * (j == low[..., None]) + frac[..., None] * (j == high[..., None])


def grid_sizes(coords: Array) -> Array:
  """(N, 2) patch grid (h, w) of each image: one plus its largest (row, column), padding's being (0, 0)."""
  return jnp.max(coords, axis=1) + 1


def unpack(packed: Array) -> dict[str, Array]:
  """The mapping of a packed (N, L, P*P*C + 3) batch: patches, then (row, column) and validity as numbers."""
  width = packed.shape[-1]  # Static slices, not gathers: exporters take no gather on a batch of open size.
  return {
    "patches": jax.lax.slice_in_dim(packed, 0, width - 3, axis=-1),
    "patch_coord": jnp.round(jax.lax.slice_in_dim(packed, width - 3, width - 1, axis=-1)).astype(jnp.int32),
    "patch_valid": _column(packed, width - 1) > 0.5,
  }


def _column(x: Array, index: int) -> Array:
  """x[..., index] as a static slice (no gather)."""
  return jax.lax.index_in_dim(x, index, axis=-1, keepdims=False)


def patchify(images: Array, patch: int) -> dict[str, Array]:
  """An image batch (N, H, W, C) as the NaFlex input of its full patch grid, row-major, nothing padded."""
  check_patch_size(images, patch)
  n, height, width, c = images.shape
  h, w = height // patch, width // patch
  patches = images.reshape(n, h, patch, w, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * w, patch * patch * c)
  rows, cols = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
  coords = jnp.tile(jnp.stack([rows.reshape(-1), cols.reshape(-1)], axis=-1)[None], (n, 1, 1))
  return {"patches": patches, "patch_coord": coords, "patch_valid": jnp.ones((n, h * w), bool)}


class NaFlexVisionTransformer(vit.TransformerClassifier):
  """NaFlex ViT classifier: images (N, H, W, C), the patches mapping or its packed form (module docstring) -> float32
  logits.

  `classifier` "gap" (masked mean of the patch tokens), "map" (attention pooling over them) or "token" (a class
  token); `num_registers` tokens follow it. `fc_norm` moves the final LayerNorm after pooling (timm's gap models).
  `posemb` "learn" or "factorized", stored at `posemb_grid`, resampled as the module docstring says.
  """

  classifier: str = "gap"
  num_registers: int = 0
  posemb: str = "learn"
  posemb_grid: tuple[int, int] = (16, 16)
  posemb_interpolation: str = "bicubic"
  posemb_keep_aspect: bool = False
  fc_norm: bool = False
  qkv_bias: bool = True
  layerscale: float | None = None
  qk_norm: bool = False
  gelu_approximate: bool = False  # timm's exact GELU; the SigLIP models use the tanh one.
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  remat: str = "none"
  scan: bool = False
  attention: str = "xla"

  @property
  def prefix_tokens(self) -> int:
    """Tokens before the patch tokens in every block (class token, then registers)."""
    return int(self.classifier == "token") + self.num_registers

  @property
  def readout_tokens(self) -> tuple[int, ...]:
    return (0,) if self.classifier == "token" else ()

  @nn.compact
  def __call__(self, inputs: Array | Mapping[str, Array], *, train: bool) -> Array:
    self._check_options()
    if not isinstance(inputs, Mapping):
      inputs = unpack(inputs) if inputs.ndim == 3 else patchify(inputs, self.patch_size)
    patches, coords, valid = (inputs[k] for k in ("patches", "patch_coord", "patch_valid"))
    valid = valid.astype(bool)
    coords = jnp.where(valid[..., None], coords, 0)  # Padding at any coordinate stays finite (and unseen).
    x = nn.Dense(self.hidden_size, dtype=self.dtype, name="embedding")(patches.astype(self.dtype))
    x = x + self._position_embedding(coords).astype(x.dtype)
    x, num_cls = self._prefix(x)
    keys = jnp.concatenate([jnp.ones((x.shape[0], num_cls + self.num_registers), bool), valid], axis=1)
    x = vit.Encoder(
      **forward_fields(self, *vit.ENCODER_SIZES, "qk_norm", "layerscale", "attention", "gelu_approximate"),
      **forward_fields(self, "remat", "scan", "qkv_bias", "dtype"),
      learned_posemb=False,
      final_norm=not self.fc_norm,
      name="Transformer",
    )(x, train=train, registers=self._registers(x), num_cls=num_cls, mask=keys[:, None, None, :])
    x = self._pool(x, valid)
    if self.fc_norm:
      x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="fc_norm")(x)
    return self.classify(x)

  def _position_embedding(self, coords: Array) -> Array:
    """Each patch's position embedding (N, L, D), from the stored table resampled to its image's grid."""
    sizes = grid_sizes(coords)
    if self.posemb_keep_aspect:
      sizes = jnp.tile(jnp.max(sizes, axis=-1, keepdims=True), (1, 2))
    out_h, out_w = _column(sizes, 0)[:, None], _column(sizes, 1)[:, None]
    rows, cols = _column(coords, 0), _column(coords, 1)
    (gh, gw), dim = self.posemb_grid, self.hidden_size
    init = nn.initializers.normal(stddev=0.02)
    if self.posemb == "factorized":
      table_y = self.param("pos_embedding_y", init, (gh, dim), jnp.float32)
      table_x = self.param("pos_embedding_x", init, (gw, dim), jnp.float32)
      wy, wx = linear_weights(rows, out_h, gh), linear_weights(cols, out_w, gw)
      return wy @ table_y + wx @ table_x
    table = self.param("pos_embedding", init, (gh, gw, dim), jnp.float32)
    wy = antialias_weights(rows, out_h, gh, self.posemb_interpolation)
    wx = antialias_weights(cols, out_w, gw, self.posemb_interpolation)
    weights = (wy[..., :, None] * wx[..., None, :]).reshape(*wy.shape[:-1], gh * gw)
    return weights @ table.reshape(gh * gw, dim)

  def _prefix(self, x: Array) -> tuple[Array, int]:
    """The tokens with the class token in front when the head reads it, and how many class tokens there are."""
    if self.classifier != "token":
      return x, 0
    cls = self.param("cls", nn.initializers.normal(1e-6), (1, 1, x.shape[-1]), jnp.float32)
    return jnp.concatenate([jnp.tile(cls.astype(x.dtype), (x.shape[0], 1, 1)), x], axis=1), 1

  def _registers(self, x: Array) -> Array | None:
    if not self.num_registers:
      return None
    registers = self.param("registers", nn.initializers.normal(1e-6), (1, self.num_registers, x.shape[-1]))
    return jnp.tile(registers, (x.shape[0], 1, 1))

  def _pool(self, x: Array, valid: Array) -> Array:
    """One vector per image from the encoded tokens; padding and registers never reach it."""
    if self.classifier == "token":
      return jax.lax.index_in_dim(x, 0, axis=1, keepdims=False)
    x = jax.lax.slice_in_dim(x, self.prefix_tokens, x.shape[1], axis=1)
    if self.classifier == "gap":
      weights = valid.astype(x.dtype)[..., None]
      return jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1)
    return MAPHead(
      mlp_dim=self.mlp_dim,
      num_heads=self.num_heads,
      attention=self.attention,
      gelu_approximate=self.gelu_approximate,
      dtype=self.dtype,
      name="MAPHead_0",
    )(x, mask=valid[:, None, None, :])

  def _check_options(self) -> None:
    choices = {"classifier": vit.CLASSIFIERS, "posemb": POSEMBS, "posemb_interpolation": tuple(INTERPOLATIONS)}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ConfigError(f"Unknown {name} {getattr(self, name)!r}; choose one of: {', '.join(allowed)}")


def parse_name(name: str) -> tuple[type[nn.Module], dict[str, Any]] | None:
  """`naflexvit_{variant}{patch}` (any ViT variant and patch size) -> timm's `naflexvit_base_patch16_gap` design
  at that size: 4 registers, layer scale 1e-5, gap with fc_norm; None for any other name."""
  match = re.fullmatch(rf"naflexvit_({'|'.join(vit.VARIANTS)})([1-9]\d*)", name)
  if not match:
    return None
  return NaFlexVisionTransformer, dict(vit.VARIANTS[match[1]], patch_size=int(match[2]), **_GAP)


OPTIONS = {
  **{key: vit.OPTIONS[key] for key in ("dropout_rate", "attention_dropout_rate", "stochastic_depth", "qk_norm")},
  **{key: vit.OPTIONS[key] for key in ("gelu_approximate", "remat", "scan", "attention", "layerscale")},
  **{key: vit.OPTIONS[key] for key in ("classifier", "num_registers")},
  "posemb": registry.Option(str, '"learn" (a 2-D table) or "factorized" (row and column tables), resampled.'),
  "posemb_grid": registry.Option(tuple, "NaFlex: the (rows, columns) of the stored position table."),
  "posemb_interpolation": registry.Option(str, 'NaFlex: "bicubic" or "bilinear" (antialiased) table resampling.'),
  "posemb_keep_aspect": registry.Option(bool, "NaFlex: resample the table to a square grid, then crop it."),
  "fc_norm": registry.Option(bool, "NaFlex: the final LayerNorm after pooling instead of before."),
  "qkv_bias": registry.Option(bool, "NaFlex: biases on the attention's queries, keys and values."),
}
FAMILY = registry.family(
  "naflexvit",
  options=OPTIONS,
  layer_groups=registry.LayerGroups(
    blocks=(vit.BLOCKS,), stem=r"(^|/)(embedding|cls|registers|pos_embedding(_x|_y)?)(/|$)"
  ),
  parse=parse_name,
  parse_help=f"naflexvit_{{variant}}{{patch}} (variants: {', '.join(vit.VARIANTS)})",
)
_GAP = dict(classifier="gap", fc_norm=True, num_registers=4, layerscale=1e-5)
_BASE = dict(vit.VARIANTS["b"], patch_size=16)
_SO150M2 = dict(hidden_size=832, mlp_dim=2176, num_heads=13, num_layers=21, patch_size=16, qkv_bias=False)
_SIGLIP = dict(classifier="map", gelu_approximate=True, posemb_interpolation="bilinear")
# timm 1.0.31's definitions and parameter counts (1000 classes; any image size).
for _name, _kwargs, _params in (
  ("naflexvit_base_patch16_gap", dict(_BASE, **_GAP), 86_633_704),
  ("naflexvit_base_patch16_par_gap", dict(_BASE, **_GAP, posemb_keep_aspect=True), 86_633_704),
  ("naflexvit_base_patch16_parfac_gap", dict(_BASE, **_GAP, posemb_keep_aspect=True, posemb="factorized"), 86_461_672),
  ("naflexvit_base_patch16_map", dict(_BASE, classifier="map", num_registers=1, layerscale=1e-5), 93_718_504),
  ("naflexvit_so150m2_patch16_reg1_gap", dict(_SO150M2, **{**_GAP, "num_registers": 1}), 136_058_728),
  (
    "naflexvit_so150m2_patch16_reg1_map",
    dict(_SO150M2, classifier="map", num_registers=1, layerscale=1e-5),
    142_457_320,
  ),
  ("naflexvit_base_patch16_siglip", dict(_BASE, **_SIGLIP), 93_699_304),
  (
    "naflexvit_so400m_patch16_siglip",
    dict(hidden_size=1152, mlp_dim=4304, num_heads=16, num_layers=27, patch_size=16, **_SIGLIP),
    429_041_064,
  ),
):
  registry.register(FAMILY, _name, NaFlexVisionTransformer, _kwargs, params=_params)
