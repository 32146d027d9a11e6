"""MLP-Mixer (Tolstikhin et al. 2021) with the parameter names of the public Mixer `.npz` checkpoints.

Tree (Mixer-B/16): `stem/{kernel (16,16,3,768), bias}`, `MixerBlock_{i}/{LayerNorm_0, token_mixing/{Dense_0,
Dense_1}, LayerNorm_1, channel_mixing/{Dense_0,Dense_1}}`, `pre_head_layer_norm`, `head`. The MLPs use the exact
GELU, as timm's `mixer_*_224` (the released JAX code used the tanh approximation; the logits differ by ~1e-3).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.models import registry
from vitjax.models.layers import Classifier, DropPath, Layer, check_patch_size, gelu, patch_embedding

Array = jax.Array

# hidden size, blocks, token-mixing and channel-mixing MLP widths (Tolstikhin et al. 2021, table 1).
VARIANTS = {
  "s": dict(hidden_size=512, num_blocks=8, tokens_mlp_dim=256, channels_mlp_dim=2048),
  "b": dict(hidden_size=768, num_blocks=12, tokens_mlp_dim=384, channels_mlp_dim=3072),
  "l": dict(hidden_size=1024, num_blocks=24, tokens_mlp_dim=512, channels_mlp_dim=4096),
}


class MlpBlock(Layer):
  """Dense, GELU, Dense over the last axis (`Dense_0`, `Dense_1`)."""

  mlp_dim: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    y = gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0")(x))
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="Dense_1")(y)


class MixerBlock(Layer):
  """Token mixing (an MLP across patches, per channel), then channel mixing (per patch); pre-LayerNorm, residual."""

  tokens_mlp_dim: int
  channels_mlp_dim: int
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")(x)
    y = MlpBlock(self.tokens_mlp_dim, dtype=self.dtype, name="token_mixing")(jnp.swapaxes(y, 1, 2))
    x = x + DropPath(self.drop_path_rate)(jnp.swapaxes(y, 1, 2), deterministic=deterministic)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_1")(x)
    y = MlpBlock(self.channels_mlp_dim, dtype=self.dtype, name="channel_mixing")(y)
    return x + DropPath(self.drop_path_rate)(y, deterministic=deterministic)


class MlpMixer(Classifier):
  """Mixer classifier: images (N, H, W, C) -> float32 logits; pooled features when `num_classes` is 0 or None.

  The token-mixing MLP is as wide as the patch count, so the input size is fixed by the parameters.
  `stochastic_depth` is the last block's drop-path rate, rising linearly from 0.
  """

  num_classes: int | None
  patch_size: int
  hidden_size: int
  num_blocks: int
  tokens_mlp_dim: int
  channels_mlp_dim: int
  dropout_rate: float = 0.0
  stochastic_depth: float = 0.0

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Array:
    p = self.patch_size
    check_patch_size(images, p)
    x = patch_embedding(self.hidden_size, p, dtype=self.dtype, name="stem")(images.astype(self.dtype))
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    rates = np.linspace(0.0, self.stochastic_depth, self.num_blocks).tolist()
    for i in range(self.num_blocks):
      x = MixerBlock(self.tokens_mlp_dim, self.channels_mlp_dim, rates[i], dtype=self.dtype, name=f"MixerBlock_{i}")(
        x, deterministic=not train
      )
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="pre_head_layer_norm")(x)
    x = jnp.mean(x.astype(jnp.float32), axis=1)
    return self.classify(x, self.dropout_rate, train)


FAMILY = registry.family(
  "mixer",
  options=registry.REGULARISATION,
  layer_groups=registry.LayerGroups(blocks=((r"^MixerBlock_(\d+)/", 1),), stem=r"^stem/"),
)
# timm 1.0.31's counts (mixer_*16_224) at 224x224 with 1000 classes.
for _variant, _params in {"s": 18_528_264, "b": 59_880_472, "l": 208_196_168}.items():
  registry.register(FAMILY, f"mixer_{_variant}16", MlpMixer, dict(VARIANTS[_variant], patch_size=16), params=_params)
