"""DeiT with distillation token (Touvron et al. 2021), as timm's `deit_*_distilled_patch16_224`.

The ViT tree (`embedding`, `cls`, `Transformer/...`, `head`) plus a distillation token `dist` (1, 1, D), a position
embedding over the patches and both tokens, and a second classifier `head_dist` reading the distillation token.
The logits are the mean of both heads (timm without distillation: a supervised objective trains both heads on the
labels); in train mode both heads' logits are also sown (`intermediates/class_logits`, `distill_logits`), so that
the distillation objective trains the class head on the labels and the distillation head from the teacher.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.models import registry, vit
from vitjax.models.layers import check_patch_size, forward_fields, patch_embedding, pre_logits, zero_head

Array = jax.Array


class DistilledVisionTransformer(vit.TransformerClassifier):
  """DeiT classifier: images (N, H, W, C) -> float32 logits (N, num_classes); features when `num_classes` is 0."""

  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0

  # Tokens before the patch tokens (class, distillation) and those the two heads read, as VisionTransformer's.
  prefix_tokens = 2
  readout_tokens = (0, 1)

  @nn.compact
  def __call__(self, images: Array, *, train: bool) -> Array:
    p = self.patch_size
    check_patch_size(images, p)
    x = patch_embedding(self.hidden_size, p, dtype=self.dtype, name="embedding")(images.astype(self.dtype))
    n, h, w, c = x.shape
    tokens = [
      jnp.tile(self.param(name, nn.initializers.normal(stddev=0.02), (1, 1, c), jnp.float32).astype(x.dtype), (n, 1, 1))
      for name in ("cls", "dist")
    ]
    x = jnp.concatenate([*tokens, x.reshape(n, h * w, c)], axis=1)
    x = vit.Encoder(
      **forward_fields(self, *vit.ENCODER_SIZES, "dtype"),
      gelu_approximate=False,  # timm's DeiT: the exact GELU.
      name="Transformer",
    )(x, train=train)
    # Static slices, not gathers (see VisionTransformer).
    cls, dist = (jax.lax.index_in_dim(x, i, axis=1, keepdims=False).astype(jnp.float32) for i in (0, 1))
    features = pre_logits(self, (cls + dist) / 2)
    if not self.num_classes:
      return features
    logits = zero_head(self.num_classes, self.head_bias_init)(cls)
    distill_logits = zero_head(self.num_classes, self.head_bias_init, name="head_dist")(dist)
    if train:
      self.sow("intermediates", "class_logits", logits)
      self.sow("intermediates", "distill_logits", distill_logits)
    return (logits + distill_logits) / 2


FAMILY = registry.family(
  "deit",
  options={key: vit.OPTIONS[key] for key in ("dropout_rate", "attention_dropout_rate", "stochastic_depth")},
  layer_groups=registry.LayerGroups(blocks=(vit.BLOCKS,), stem=rf"{vit.STEM}|(^|/)dist(/|$)"),
)
# timm 1.0.31's counts (deit_*_distilled_patch16_224) at 224x224 with 1000 classes.
for _variant, _params in {"ti": 5_910_800, "s": 22_436_432, "b": 87_338_192}.items():
  _kwargs = dict(vit.VARIANTS[_variant], patch_size=16)
  registry.register(FAMILY, f"deit_{_variant}16_distilled", DistilledVisionTransformer, _kwargs, params=_params)
