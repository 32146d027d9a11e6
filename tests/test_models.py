"""Tests of vitjax.models: exact parameter counts, shapes, numerics against independent references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax import models

# Parameter counts at 224x224 with 1000 classes: the public vit_jax models_test.py for ViT and hybrids.
EXPECTED_PARAMS = {
    "vit_ti16": 5_717_416,
    "vit_s16": 22_050_664,
    "vit_s32": 22_878_952,
    "vit_b16": 86_567_656,
    "vit_b32": 88_224_232,
    "vit_b8": 86_576_872,
    "vit_l16": 304_326_632,
    "vit_l32": 306_535_400,
    "vit_h14": 632_045_800,
}


def count_params(model, *, image_size: int = 224) -> int:
    """Parameter count from abstract shapes only (nothing is allocated)."""
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


def init(model, images, seed: int = 0):
    return jax.jit(lambda x: model.init(jax.random.key(seed), x, train=False))(images)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_param_count(name):
    assert count_params(models.build(name, num_classes=1000)) == EXPECTED_PARAMS[name]


def test_gap_classifier_drops_class_token_params():
    # vit_jax's ViT-B/16-gap-norep: no `cls` and one position embedding fewer.
    assert count_params(models.build("vit_b16", num_classes=1000, classifier="gap")) == 86_566_120


@pytest.mark.parametrize("image_size", [16, 32, 48])
def test_vit_output_shape_at_several_sizes(image_size):
    model = models.build("vit_micro8", num_classes=7, num_layers=1)
    images = jnp.ones((2, image_size, image_size, 3))
    variables = init(model, images)
    logits = model.apply(variables, images, train=False)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    n_tokens = (image_size // 8) ** 2 + 1
    assert variables["params"]["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, n_tokens, 128)


def test_image_size_not_divisible_by_patch_raises():
    model = models.build("vit_micro8", num_classes=7, num_layers=1)
    with pytest.raises(ValueError, match="divisible"):
        init(model, jnp.ones((1, 20, 20, 3)))


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match=r"Unknown model 'vit_q16'; choose one of: .*vit_b16"):
        models.build("vit_q16", num_classes=10)


def test_unknown_override_raises():
    with pytest.raises(ValueError, match=r"Unknown override\(s\) 'dropout'.*dropout_rate"):
        models.build("vit_b16", num_classes=10, dropout=0.1)


def test_any_patch_size_parses():
    model = models.build("vit_s14", num_classes=10)
    assert (model.patch_size, model.hidden_size, model.num_layers) == (14, 384, 12)
    assert "vit_b16" in models.names() and "vit_micro4" in models.names()
