"""A model family defined outside the package registers itself and trains through the real loop: its names build,
its option becomes a config key with its doc, and layer-wise learning rates follow its layer groups."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from tests.support import param_count
from vitjax import checkpoints, models
from vitjax.configs import common
from vitjax.models import registry
from vitjax.models.layers import classifier_head
from vitjax.train import loop, optim

STEM_INIT = 0.05  # Stem and blocks start constant, so that a test can tell whether they moved.


class ToyNet(nn.Module):
  """A patch-embedding stem, `toy_depth` residual MLP blocks (`block1`, ...), mean pooling and the shared head."""

  num_classes: int | None
  width: int = 8
  toy_depth: int = 2
  head_bias_init: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    init = nn.initializers.constant(STEM_INIT)
    x = nn.Conv(self.width, (8, 8), (8, 8), kernel_init=init, dtype=self.dtype, name="stem")(images)
    for i in range(self.toy_depth):
      x = x + nn.relu(nn.Dense(self.width, kernel_init=init, dtype=self.dtype, name=f"block{i + 1}")(x))
    x = jnp.mean(x, axis=(1, 2))
    return classifier_head(self, x, num_classes=self.num_classes, bias_init=self.head_bias_init)


TOY = registry.family(
  "toy",
  options={
    "width": registry.Option(int, "Channels of the toy's stem and blocks."),
    "toy_depth": registry.Option(int, "Residual blocks of the toy."),
  },
  layer_groups=registry.LayerGroups(blocks=((r"^block(\d+)/", 0),), stem=r"^stem/"),
)
# 8*8*3*8 + 8 (stem), 8*8 + 8 per block, 8*10 + 10 (head): 1,778 with 2 blocks, 1,922 with 4 (10 classes).
registry.register(TOY, "toy_s", ToyNet, params=1_778, params_at=(32, 10))
registry.register(TOY, "toy_l", ToyNet, dict(toy_depth=4), params=1_922, params_at=(32, 10))


def test_the_toy_builds_by_name_and_declares_its_option():
  assert {"toy_s", "toy_l"} <= set(models.names())
  assert param_count(registry.entry("toy_s")) == 1_778 and param_count(registry.entry("toy_l")) == 1_922
  config = common.get_base_config()
  assert config.model.toy_depth is None and "toy: Residual blocks of the toy." == models.option_docs()["toy_depth"]
  config.model.update(name="toy_s", toy_depth=3)
  assert models.from_config(config.model, num_classes=10).toy_depth == 3


def test_the_toy_trains_in_the_loop_with_layerwise_rates_from_its_groups(digits_dir, tmp_path):
  params = jax.eval_shape(lambda: models.init_variables(ToyNet(10), jax.random.key(0), image_shape=(32, 32, 3)))
  scales = optim.layerwise_scales(params["params"], 0.5, models.layer_groups("toy_s"))
  assert [scales[k]["kernel"] for k in ("stem", "block1", "block2", "head")] == [0.125, 0.25, 0.5, 1.0]

  config = quickstart.get_config("runlocal")
  config.data.data_dir = digits_dir
  config.model.name = "toy_s"
  config.total_steps, config.eval_every, config.checkpoint_every = 3, 3, 3
  # A decay of 0 leaves every rate but the top's at zero: only the head may move if the loop used the toy's groups.
  config.optimizer.layerwise_decay = 0.0
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 3 and np.isfinite(results["loss"])
  trained = checkpoints.load_run(str(tmp_path)).params
  for name in ("stem", "block1", "block2"):
    np.testing.assert_array_equal(trained[name]["kernel"], np.float32(STEM_INIT))
  assert np.abs(trained["head"]["bias"]).max() > 0


def test_an_unknown_toy_name_names_the_toys_too():
  with pytest.raises(ValueError, match=r"Unknown model 'toy_xl'; choose one of: .*toy_s, toy_l"):
    models.build("toy_xl", num_classes=10)
