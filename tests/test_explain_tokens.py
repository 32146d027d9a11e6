"""Token maps of ViTs with more than a class token before the patches: registers, DeiT's distillation token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax import models
from vitjax.explain import attention, gradcam, maps
from vitjax.explain.scorer import Scorer

SMALL = {"num_layers": 2, "hidden_size": 12, "mlp_dim": 16, "num_heads": 3}
# (model, image side, tokens before the 16 patches, the tokens the attention of a block sees).
CASES = {
  "registers": (lambda: models.build("vit_micro4", num_classes=3, num_registers=2, **SMALL), 16, 3, 19),
  "registers_gap": (
    lambda: models.build("vit_micro4", num_classes=3, num_registers=2, classifier="gap", **SMALL),
    16,
    2,
    18,
  ),
  "registers_map": (
    lambda: models.build("vit_micro4", num_classes=3, num_registers=2, classifier="map", **SMALL),
    16,
    2,
    18,
  ),
  "deit": (lambda: models.build("deit_ti16_distilled", num_classes=3, **SMALL), 64, 2, 18),
}


def _zero_query_scorer(model, side):
  """The model with every query kernel and bias zero: each block attends uniformly to all of its tokens."""
  variables = model.init(jax.random.key(0), jnp.zeros((1, side, side, 3)), train=False)
  zero = lambda path, x: jnp.zeros_like(x) if "query" in "/".join(str(k.key) for k in path) else x  # noqa: E731
  return Scorer(jax.tree_util.tree_map_with_path(zero, variables), model, lambda x: x / 127.5 - 1.0)


@pytest.mark.parametrize("case", CASES)
def test_the_model_says_how_many_tokens_precede_the_patches(case):
  build, side, prefix, _ = CASES[case]
  model = build()
  assert maps.prefix_tokens(model) == prefix
  tokens = jnp.arange(prefix + 16, dtype=jnp.float32)[:, None]  # Each token carries its own position.
  grid = maps.as_grid(tokens, (side, side, 3), maps.prefix_tokens(model))[..., 0]
  np.testing.assert_array_equal(grid, np.arange(prefix, prefix + 16).reshape(4, 4))  # The patches, row by row.


@pytest.mark.parametrize("case", CASES)
def test_attention_maps_and_grad_cam_cover_the_patch_grid(case):
  build, side, _, seen = CASES[case]
  model = build()
  scorer = _zero_query_scorer(model, side)
  image = jnp.asarray(np.random.default_rng(0).integers(0, 256, (side, side, 3)), jnp.float32)
  flow, heads = attention.attention_maps(scorer, image)
  assert flow.shape == (side, side) and heads.shape == (3, side, side)
  np.testing.assert_allclose(flow, flow[0, 0], rtol=1e-5)  # Uniform attention rolls out to a uniform map.
  if case != "registers_map":  # The MAP probe attends over its own (trained) query, not the zeroed ones.
    np.testing.assert_allclose(heads, 1.0 / seen, rtol=1e-5)  # Every token of the block, registers included.
  cam = gradcam.grad_cam(scorer, image, 1, layer="Transformer/encoderblock_1")
  assert cam.shape == (side, side) and np.all(np.isfinite(np.asarray(cam)))
