"""Model registry: plain names used by configs and notebooks -> configured Flax modules.

`build("vit_b16", num_classes=10, dropout_rate=0.1)` returns an unbound module whose
`__call__(images, *, train)` gives float32 logits. ViT names are parsed generically as
`vit_{variant}{patch}` (variants: ti, s, b, l, h, g, micro), so any patch size works.
"""

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from vitjax.errors import ConfigError
from vitjax.models import (
  alexnet,
  cifar_resnet,
  coatnet,
  convnext,
  deit,
  densenet,
  efficientnet,
  hybrid,
  mixer,
  mobilenet,
  resnet,
  swin,
  vgg,
  vit,
)
from vitjax.models.analysis import forward_gflops, parameter_overview
from vitjax.models.flexi import resize_patch_embedding

__all__ = [
  "build",
  "from_config",
  "init_variables",
  "names",
  "forward_gflops",
  "parameter_overview",
  "resize_patch_embedding",
]

_VIT_NAME = re.compile(rf"vit_({'|'.join(vit.VARIANTS)})([1-9]\d*)")

_CANONICAL_VITS = (
  "vit_ti16",
  "vit_s16",
  "vit_s32",
  "vit_b16",
  "vit_b32",
  "vit_b8",
  "vit_l16",
  "vit_l32",
  "vit_h14",
  "vit_g14",
  "vit_micro4",
  "vit_micro8",
)


def _hybrid(variant: str, *, patch_size: int, resnet_stages: tuple[int, ...]) -> dict[str, Any]:
  """Arguments of a hybrid as vit_jax's configs: the ResNet's strides times `patch_size` give the /16 or /32."""
  return dict(vit.VARIANTS[variant], patch_size=patch_size, resnet_stages=resnet_stages)


# Module class and its architecture arguments for every name that is not a parsed ViT name.
_FIXED: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
  **{
    f"resnet{depth}": (resnet.ResNet, dict(stage_sizes=stages, bottleneck=depth >= 50))
    for depth, stages in resnet.STAGE_SIZES.items()
  },
  **{
    f"bit_r{depth}x{width}": (resnet.BiTResNet, dict(stage_sizes=resnet.STAGE_SIZES[depth], width_factor=width))
    for depth, width in [(50, 1), (101, 1), (50, 3), (101, 3), (152, 2), (152, 4)]
  },
  "r50_vit_b16": (hybrid.HybridVisionTransformer, _hybrid("b", patch_size=1, resnet_stages=(3, 4, 9))),
  "r50_vit_l32": (hybrid.HybridVisionTransformer, _hybrid("l", patch_size=1, resnet_stages=(3, 4, 6, 3))),
  "r26_vit_s32": (hybrid.HybridVisionTransformer, _hybrid("s", patch_size=1, resnet_stages=(2, 2, 2, 2))),
  "r_vit_ti16": (hybrid.HybridVisionTransformer, _hybrid("ti", patch_size=8, resnet_stages=())),
  # Classic convnets: torchvision's AlexNet, timm's VGG and DenseNet, He et al.'s CIFAR ResNets (6n + 2 layers).
  "alexnet": (alexnet.AlexNet, {}),
  **{f"vgg{depth}": (vgg.VGG, dict(stages=stages)) for depth, stages in vgg.STAGES.items()},
  **{f"vgg{depth}_bn": (vgg.VGG, dict(stages=stages, batch_norm=True)) for depth, stages in vgg.STAGES.items()},
  **{f"densenet{depth}": (densenet.DenseNet, kwargs) for depth, kwargs in densenet.VARIANTS.items()},
  **{f"resnet{6 * n + 2}": (cifar_resnet.CifarResNet, dict(stage_sizes=(n, n, n))) for n in (3, 5, 7, 9, 18)},
  # timm's efficientnet_b*, mobilenetv2_100, mobilenetv3_*_100 and convnext_*.
  **{f"efficientnet_{v}": (efficientnet.EfficientNet, efficientnet.variant_args(v)) for v in efficientnet.VARIANTS},
  "mobilenet_v2": (efficientnet.EfficientNet, efficientnet.MOBILENETV2_ARGS),
  **{f"mobilenet_v3_{v}": (mobilenet.MobileNetV3, kwargs) for v, kwargs in mobilenet.VARIANTS.items()},
  **{f"convnext_{v}": (convnext.ConvNeXt, convnext.variant_args(v)) for v in convnext.VARIANTS},
  # timm's deit_*_distilled_patch16_224, swin_*_patch4_window7_224, mixer_*16_224 and coatnet_0_224.
  **{
    f"deit_{v}16_distilled": (deit.DistilledVisionTransformer, dict(vit.VARIANTS[v], patch_size=16))
    for v in ("ti", "s", "b")
  },
  **{f"swin_{v}": (swin.SwinTransformer, kwargs) for v, kwargs in swin.VARIANTS.items()},
  **{f"mixer_{v}16": (mixer.MlpMixer, dict(kwargs, patch_size=16)) for v, kwargs in mixer.VARIANTS.items()},
  "coatnet_0": (coatnet.CoAtNet, {}),
}


def names() -> list[str]:
  """Canonical registered names (any other `vit_{variant}{patch}` builds too)."""
  return [*_CANONICAL_VITS, *_FIXED]


def build(name: str, *, num_classes: int | None, **overrides: Any) -> nn.Module:
  """Returns the module registered as `name`; `overrides` replace its keyword arguments.

  `num_classes` 0 or None gives a model without head that returns pre-logits features.
  Raises ValueError for an unknown name or an override the module does not take.
  """
  cls, kwargs = _resolve(name)
  valid = sorted(_options(cls))
  unknown = sorted(set(overrides) - set(valid))
  if unknown:
    raise ConfigError(
      f"Unknown override(s) {', '.join(map(repr, unknown))} for model {name!r}; valid: {', '.join(valid)}"
    )
  return cls(num_classes=num_classes, **{**kwargs, **overrides})


def from_config(config: ml_collections.ConfigDict, *, num_classes: int | None) -> nn.Module:
  """The model of `config.model`: its `name`, and every option that is set (not None) and that this model takes.

  Options of other families (a ViT's `classifier` on a ResNet) are skipped with a warning, so switching the model
  of a config needs no other change; `dtype` is the compute dtype by name (parameters stay float32).
  """
  options = {k: v for k, v in config.to_dict().items() if k != "name" and v is not None}
  cls, _ = _resolve(config.name)
  accepted = _options(cls)
  skipped = sorted(set(options) - accepted)
  if skipped:
    logging.warning("Model %s takes no %s: ignored.", config.name, ", ".join(skipped))
  kwargs = {k: v for k, v in options.items() if k in accepted}
  if "dtype" in kwargs:
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  return build(config.name, num_classes=num_classes, **kwargs)


def init_variables(model: nn.Module, rng: jax.Array, *, image_shape: tuple[int, ...]) -> dict[str, Any]:
  """The model's variables for one float32 image batch of `image_shape` (height, width, channels)."""
  return model.init({"params": rng, "dropout": rng}, jnp.zeros((1, *image_shape), jnp.float32), train=False)


def _options(cls: type[nn.Module]) -> set[str]:
  """The keyword arguments a module class takes besides `num_classes`."""
  return {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name", "num_classes")}


def _resolve(name: str) -> tuple[type[nn.Module], dict[str, Any]]:
  """Module class and architecture arguments for a registered or parsable name."""
  match = _VIT_NAME.fullmatch(name)
  if match:
    return vit.VisionTransformer, dict(patch_size=int(match[2]), **vit.VARIANTS[match[1]])
  if name in _FIXED:
    return _FIXED[name]
  raise ConfigError(f"Unknown model {name!r}; choose one of: {', '.join(names())}")
