"""timm's MaxxVit state dict of a CoAtNet (`coatnet_0_224`) -> `models.coatnet.CoAtNet`.

The tree carries timm's names ('.' as '/', `stages_{i}/blocks_{j}`); the 1x1 convs of the transformer blocks and
of squeeze-excitation are Dense layers here, `norm1.norm` (a first block's norm before its pooling) is `norm1`, and
the head's `norm`, `pre_logits.fc`, `fc` are `final_norm`, `pre_head`, `head`.
"""

import re
from collections.abc import Mapping

import numpy as np

from vitjax.transfer.timm import layout, registry

_BLOCK = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.")


def matches(state: Mapping[str, np.ndarray]) -> bool:
  return "stem.conv1.weight" in state and "stages.0.blocks.0.conv2_kxk.weight" in state


def pointwise(state: Mapping[str, np.ndarray], source: str, target: str) -> dict[str, np.ndarray]:
  """A torch 1x1 conv (out, in, 1, 1) as the Dense at `target` (kernel (in, out))."""
  out = {f"params/{target}/kernel": layout.dense_kernel(state[f"{source}.weight"][:, :, 0, 0])}
  if f"{source}.bias" in state:
    out[f"params/{target}/bias"] = state[f"{source}.bias"]
  return out


def convert(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {**layout.conv(state, "stem.conv1", "stem/conv1"), **layout.conv(state, "stem.conv2", "stem/conv2")}
  out.update(layout.batch_norm(state, "stem.norm1", "stem/norm1"))
  for stage, block in sorted({(int(m[1]), int(m[2])) for m in map(_BLOCK.match, state) if m}):
    source, target = f"stages.{stage}.blocks.{block}", f"stages_{stage}/blocks_{block}"
    if f"{source}.shortcut.expand.weight" in state:
      out.update(layout.conv(state, f"{source}.shortcut.expand", f"{target}/shortcut/expand"))
    convert_block = _mbconv if f"{source}.conv2_kxk.weight" in state else _transformer
    out.update(convert_block(state, source, target))
  out.update(layout.norm(state, "head.norm", "final_norm"))
  out.update(layout.dense(state, "head.pre_logits.fc", "pre_head"))
  if "head.fc.weight" in state:
    out.update(layout.dense(state, "head.fc", "head"))
  return out


def _mbconv(state: Mapping[str, np.ndarray], source: str, target: str) -> dict[str, np.ndarray]:
  out = {}
  for name in ("pre_norm", "norm1", "norm2"):
    out.update(layout.batch_norm(state, f"{source}.{name}", f"{target}/{name}"))
  for name in ("conv1_1x1", "conv2_kxk", "conv3_1x1"):
    out.update(layout.conv(state, f"{source}.{name}", f"{target}/{name}"))
  for name in ("fc1", "fc2"):
    out.update(pointwise(state, f"{source}.se.{name}", f"{target}/se/{name}"))
  return out


def _transformer(state: Mapping[str, np.ndarray], source: str, target: str) -> dict[str, np.ndarray]:
  norm1 = f"{source}.norm1.norm" if f"{source}.norm1.norm.weight" in state else f"{source}.norm1"
  out = {**layout.norm(state, norm1, f"{target}/norm1"), **layout.norm(state, f"{source}.norm2", f"{target}/norm2")}
  table = "attn.rel_pos.relative_position_bias_table"
  out[f"params/{target}/{table.replace('.', '/')}"] = state[f"{source}.{table}"]
  for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
    out.update(pointwise(state, f"{source}.{name}", f"{target}/{name.replace('.', '/')}"))
  return out


_HEAD = {"final_norm": "head.norm", "pre_head": "head.pre_logits.fc", "head": "head.fc"}
_POINTWISE = re.compile(r"stages\.\d+\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc[12]|se\.fc[12])\.weight")


def to_timm(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Flat Flax variables of `CoAtNet` as timm's MaxxVit state dict: `convert`'s inverse (the pointwise Dense
  layers back to 1x1 convolutions, a first transformer block's norm under its `norm1.norm`)."""
  transformer = {"/".join(k.split("/")[1:3]) for k in flat if "/attn/" in k}

  def module(path: str) -> str:
    block = "/".join(path.split("/")[:2])
    if block in transformer and path == f"{block}/norm1" and block.endswith("blocks_0"):
      path = f"{block}/norm1/norm"
    path = re.sub(r"(stages|blocks)_(\d+)/", r"\1.\2.", _HEAD.get(path, path))
    return path.replace("/", ".")

  out = layout.to_torch(flat, module)
  return {k: v[:, :, None, None] if _POINTWISE.fullmatch(k) else v for k, v in out.items()}


registry.register(
  registry.Family(
    "coatnet",
    priority=80,
    matches=matches,
    convert=convert,
    to_timm=to_timm,
    architectures={"coatnet_0_224": "coatnet_0"},
  )
)
