"""A plain ViT's parameters in a NaFlex ViT's layout, so that a ViT checkpoint (`.npz` or timm) starts one.

The encoder, its final norm and the head keep their names. What differs:
- the patch embedding is a convolution kernel (P, P, C, D) in a ViT and a dense kernel over (row, column,
  channel)-flattened patches (P*P*C, D) in NaFlex: the same numbers, reshaped;
- the ViT's square position grid (with or without a class-token slot) becomes NaFlex's (rows, columns) table,
  resized bilinearly with the corners aligned, or for the factorised tables the grid's best sum of a row and a
  column table (row and column means, the overall mean counted once);
- a class token the NaFlex model does not read is dropped; one it reads takes in its position slot (NaFlex's class
  token has no position);
- registers the ViT lacks keep their initial values, LayerScale it lacks starts at 1 (the ViT's blocks unscaled);
- with `fc_norm` (the final norm after pooling) the encoder's final norm moves there.
"""

import re

import numpy as np
from absl import logging

from vitjax.transfer.posemb import grid_of, linear_weights

VIT_POSEMB = "Transformer/posembed_input/pos_embedding"
_NAFLEX_POSEMBS = ("pos_embedding", "pos_embedding_y")
_LAYERSCALE = re.compile(r"/LayerScale_\d+/scale$")


def is_vit_into_naflex(source: dict, target: dict) -> bool:
  """True when `source` is a plain ViT's flat parameters and `target` a NaFlex ViT's."""
  return VIT_POSEMB in source and any(key in target for key in _NAFLEX_POSEMBS) and VIT_POSEMB not in target


def from_vit(source: dict, target: dict) -> dict:
  """`source` (a ViT's flat parameters) in the layout of `target` (a NaFlex ViT's, concrete or abstract)."""
  out = {k: v for k, v in source.items() if k not in (VIT_POSEMB, "cls", "embedding/kernel")}
  kernel = np.asarray(source["embedding/kernel"])
  out["embedding/kernel"] = kernel.reshape(-1, kernel.shape[-1]) if kernel.ndim == 4 else kernel
  out.update(_position_tables(np.asarray(source[VIT_POSEMB]), target))
  if "cls" in target and "cls" in source:
    posemb = np.asarray(source[VIT_POSEMB])
    slot = posemb[:, :1] if grid_of(posemb.shape[1])[0] else 0  # NaFlex's class token has no position of its own.
    out["cls"] = np.asarray(source["cls"]) + slot
  if "registers" in target and "registers" not in source:
    out["registers"] = np.asarray(target["registers"])
    logging.info(
      "NaFlex from a ViT checkpoint: the %d registers keep their initial values.", target["registers"].shape[1]
    )
  for key in [k for k in target if _LAYERSCALE.search(k) and k not in source]:
    out[key] = np.ones(target[key].shape, np.float32)
  if "fc_norm/scale" in target and "Transformer/encoder_norm/scale" not in target:
    for name in ("scale", "bias"):
      out[f"fc_norm/{name}"] = out.pop(f"Transformer/encoder_norm/{name}")
  return out


def _position_tables(posemb: np.ndarray, target: dict) -> dict:
  """The ViT's (1, [1 +] g*g, D) table as NaFlex's (gh, gw, D) table, or as its (gh, D) and (gw, D) tables."""
  extra, side = grid_of(posemb.shape[1])
  grid = posemb[0, extra:].reshape(side, side, -1).astype(np.float64)
  if "pos_embedding" in target:
    rows, cols = target["pos_embedding"].shape[:2]
    resized = np.einsum("Hh,Ww,hwd->HWd", linear_weights(side, rows), linear_weights(side, cols), grid)
    return {"pos_embedding": resized.astype(posemb.dtype)}
  rows, cols = target["pos_embedding_y"].shape[0], target["pos_embedding_x"].shape[0]
  half_mean = grid.mean(axis=(0, 1)) / 2  # Row plus column table: the grid's best additive fit, mean counted once.
  return {
    "pos_embedding_y": (linear_weights(side, rows) @ (grid.mean(axis=1) - half_mean)).astype(posemb.dtype),
    "pos_embedding_x": (linear_weights(side, cols) @ (grid.mean(axis=0) - half_mean)).astype(posemb.dtype),
  }
