"""Weights from elsewhere: public ViT, hybrid and BiT `.npz` files, timm `.safetensors` files and `hf-hub:` repos, and
other runs, mapped onto this project's models."""

from vitjax.transfer import hub
from vitjax.transfer.importer import (
  LoadReport,
  canonical_names,
  load_batch_stats,
  load_pretrained,
  load_variables,
  match_params,
  read_checkpoint,
)
from vitjax.transfer.posemb import resize_posemb

__all__ = [
  "LoadReport",
  "hub",
  "canonical_names",
  "load_batch_stats",
  "load_pretrained",
  "load_variables",
  "match_params",
  "read_checkpoint",
  "resize_posemb",
]
