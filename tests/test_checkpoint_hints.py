"""A checkpoint that does not fit its model: the error ends with what that caller can change."""

import flax
import jax
import numpy as np
import pytest

from vitjax import models, transfer
from vitjax.deploy.classifier import Classifier


@pytest.fixture(scope="module")
def ten_class_npz(tmp_path_factory):
  """The micro ViT's parameters with a 10-class head, as a flat `.npz`."""
  model = models.build("vit_micro16", num_classes=10)
  params = models.init_variables(model, jax.random.key(0), image_shape=(32, 32, 3))["params"]
  path = str(tmp_path_factory.mktemp("npz") / "ten.npz")
  np.savez(path, **{k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()})
  return path


def test_loading_a_whole_model_names_the_classifiers_options_not_dont_load(ten_class_npz):
  with pytest.raises(ValueError, match=r"head/\w+ has shape") as error:
    Classifier.load(ten_class_npz, model="vit_micro16", class_names=["a", "b", "c"], pp_eval="value_range(-1, 1)")
  assert "Classifier.load's model= and class_names=" in str(error.value)
  assert "Keys that should keep the model's value go in dont_load" not in str(error.value)


def test_fine_tuning_names_dont_load(ten_class_npz):
  model = models.build("vit_micro16", num_classes=3)
  params = models.init_variables(model, jax.random.key(0), image_shape=(32, 32, 3))["params"]
  with pytest.raises(ValueError, match=r"head/\w+ has shape .* go in dont_load \(config.pretrained.dont_load"):
    transfer.load_pretrained(ten_class_npz, params, dont_load=())
  assert transfer.load_pretrained(ten_class_npz, params)["head"]["kernel"].shape == (128, 3)  # The default drops it.
