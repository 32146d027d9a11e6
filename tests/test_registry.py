"""The model registry: every registered name's parameter count, the config keys and docs it gives, its errors."""

import jax
import jax.numpy as jnp
import pytest

from tests.support import param_count
from vitjax import models
from vitjax.configs import common
from vitjax.models import registry
from vitjax.train import optim

# Every `config.model` key that configs and command lines used before the families declared their own options.
CONFIG_KEYS = {"name", "classifier", "representation_size", "posemb", "dropout_rate", "attention_dropout_rate"}
CONFIG_KEYS |= {"stochastic_depth", "head_bias_init", "num_registers", "gelu_approximate", "qk_norm", "layerscale"}
CONFIG_KEYS |= {"patch_sizes", "remat", "scan", "attention", "width", "zero_init_last_bn", "shortcut", "dtype"}


@pytest.mark.parametrize("name", [entry.name for entry in registry.entries()])
def test_registered_parameter_count(name):
  entry = registry.entry(name)
  assert entry.params is not None, f"{name} is registered without a parameter count"
  assert param_count(entry) == entry.params


def test_names_are_the_registrations_and_include_the_quickstart_model():
  assert models.names() == [entry.name for entry in registry.entries()]
  assert {"vit_micro16", "vit_b16", "resnet50", "resnet20", "coatnet_0"} <= set(models.names())
  assert len(set(models.names())) == len(models.names())


def test_unknown_model_is_one_line_naming_every_choice():
  with pytest.raises(ValueError, match=r"Unknown model 'vit_q16'; choose one of: .*vit_micro16.*") as error:
    models.build("vit_q16", num_classes=10)
  message = str(error.value)
  assert "\n" not in message and all(name in message for name in models.names())
  assert " or vit_{variant}{patch} (variants: ti, s, b, l, h, g, micro)" in message and message.endswith(").")


def test_config_model_keys_are_the_declared_options():
  config = common.get_base_config().model
  assert set(config) == {"name", *models.options()} and CONFIG_KEYS <= set(config)
  assert config.name == "vit_b16" and config.dtype == "float32" and config.classifier is None
  config.width, config.patch_sizes, config.qk_norm = 32, (8, 16), True  # Placeholders take their own type only.
  with pytest.raises(TypeError):
    config.width = "wide"


def test_every_config_model_key_has_a_one_line_doc():
  docs = models.option_docs()
  assert set(docs) == set(common.get_base_config().model)
  assert all(doc and "\n" not in doc for doc in docs.values())
  assert docs["classifier"].startswith("vit, hybrid, naflexvit: ") and "resnet: " in docs["width"]
  assert docs["dtype"] == 'Compute dtype; "bfloat16" keeps float32 parameters and optimizer state.'


def test_each_family_option_is_an_argument_of_its_modules():
  for entry in registry.entries():
    assert set(entry.family.options) <= registry.module_options(entry.module), entry.name


def test_registration_mistakes_raise():
  vit = registry.entry("vit_b16").family
  with pytest.raises(ValueError, match="'vit_b16' is registered twice"):
    registry.register(vit, "vit_b16", models.vit.VisionTransformer)
  with pytest.raises(ValueError, match="declares options ResNet does not take: attention"):
    registry.register(vit, "resnet_with_attention", models.resnet.ResNet)
  with pytest.raises(ValueError, match="Option 'width' of family 'wide' is a str"):
    registry.family("wide", options={"width": registry.Option(str, "Named widths.")})
  with pytest.raises(ValueError, match="'vit' is declared twice"):
    registry.family("vit")
  assert "resnet_with_attention" not in models.names() and "wide" not in [f.name for f in registry.families()]


@pytest.mark.parametrize(
  "model, name, depth",
  [
    ("vit_b16", "Transformer/encoderblock_3/MlpBlock_0/Dense_0/kernel", 4),
    ("vit_b16", "Transformer/posembed_input/pos_embedding", 0),
    ("vit_b16", "registers", 0),
    ("vit_b16", "MAPHead_0/probe", 12),
    ("deit_s16_distilled", "dist", 0),
    ("r50_vit_b16", "block3/unit2/conv1/kernel", 3),  # The ResNet's stages share depths with the transformer's.
    ("r50_vit_b16", "conv_root/kernel", 0),
    ("bit_r50x1", "block3/unit02/a/standardized_conv2d/kernel", 3),
    ("bit_r50x1", "root_block/standardized_conv2d/kernel", 0),
    ("resnet50", "layer2/block1/conv1/kernel", 2),  # The stage, not the block inside it.
    ("resnet50", "conv1/kernel", 0),
    ("resnet20", "bn1/scale", 0),
    ("convnext_tiny", "stages_3/blocks_2/conv_dw/kernel", 4),
    ("convnext_tiny", "stem_conv/kernel", 0),
    ("coatnet_0", "stem/conv1/kernel", 0),
    ("efficientnet_b0", "blocks_6_0/conv_pwl/kernel", 7),
    ("mobilenet_v3_large", "conv_stem/kernel", 0),
    ("efficientnet_b0", "bn2/scale", 12),  # The last BatchNorm, after conv_head: on top.
    ("densenet121", "denseblock4/denselayer3/conv1/kernel", 4),
    ("densenet121", "transition2/conv/kernel", 2),
    ("densenet121", "norm5/scale", 12),
    ("swin_t", "layers_1/blocks_0/attn/qkv/kernel", 2),
    ("swin_t", "patch_embed/proj/kernel", 0),
    ("mixer_b16", "MixerBlock_3/token_mixing/Dense_0/kernel", 4),
    ("vgg16", "features_0/kernel", 1),  # No stem: each layer of `features` is a block.
    ("alexnet", "head/kernel", 12),
  ],
)
def test_each_family_places_its_parameters(model, name, depth):
  assert models.layer_groups(model).layer_index(name, 11) == depth


def test_layerwise_scales_follow_the_model_family():
  model = models.build("resnet18", num_classes=10)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))["params"]
  scales = optim.layerwise_scales(params, 0.5, models.layer_groups("resnet18"))
  assert scales["conv1"]["kernel"] == 0.5**5 and scales["head"]["kernel"] == 1.0
  assert [scales[f"layer{k}"]["block1"]["conv2"]["kernel"] for k in (1, 2, 3, 4)] == [0.5**4, 0.5**3, 0.5**2, 0.5]
  # Another family's layer groups see no stage in a ResNet's names: everything sits at the top.
  assert set(jax.tree.leaves(optim.layerwise_scales(params, 0.5, models.layer_groups("swin_t")))) == {1.0}
