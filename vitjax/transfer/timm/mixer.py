"""timm's MlpMixer state dict -> `models.mixer.MlpMixer` (`mixer_s16`, `mixer_b16`, `mixer_l16`).

`stem.proj` is `stem`; block i's `norm1`, `mlp_tokens.fc1/fc2`, `norm2`, `mlp_channels.fc1/fc2` are
`MixerBlock_{i}/{LayerNorm_0, token_mixing/Dense_0/1, LayerNorm_1, channel_mixing/Dense_0/1}`; `norm` is
`pre_head_layer_norm`: the names of the public Mixer `.npz` files.
"""

import re
from collections.abc import Mapping

import numpy as np

from vitjax.transfer.timm import layout, registry

_BLOCK = re.compile(r"blocks\.(\d+)\.")
_BLOCK_MODULES = {
  "norm1": "LayerNorm_0",
  "mlp_tokens.fc1": "token_mixing/Dense_0",
  "mlp_tokens.fc2": "token_mixing/Dense_1",
  "norm2": "LayerNorm_1",
  "mlp_channels.fc1": "channel_mixing/Dense_0",
  "mlp_channels.fc2": "channel_mixing/Dense_1",
}


def matches(state: Mapping[str, np.ndarray]) -> bool:
  return "stem.proj.weight" in state and "blocks.0.mlp_tokens.fc1.weight" in state


def convert(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {**layout.conv(state, "stem.proj", "stem"), **layout.norm(state, "norm", "pre_head_layer_norm")}
  for i in sorted({int(m[1]) for m in map(_BLOCK.match, state) if m}):
    for source, target in _BLOCK_MODULES.items():
      mapping = layout.norm if source.startswith("norm") else layout.dense
      out.update(mapping(state, f"blocks.{i}.{source}", f"MixerBlock_{i}/{target}"))
  if "head.weight" in state:
    out.update(layout.dense(state, "head", "head"))
  return out


def _torch_module(path: str) -> str:
  inverse = {target: source for source, target in _BLOCK_MODULES.items()}
  if match := re.fullmatch(r"MixerBlock_(\d+)/(.+)", path):
    return f"blocks.{match[1]}.{inverse[match[2]]}"
  return {"stem": "stem.proj", "pre_head_layer_norm": "norm"}.get(path, path)


registry.register_renamed(
  "mixer",
  _torch_module,
  priority=70,
  matches=matches,
  convert=convert,
  architectures={f"mixer_{v}16_224": f"mixer_{v}16" for v in ("s", "b", "l")},
)
