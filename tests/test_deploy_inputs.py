"""Arrays and files through a run's `pp_eval`: the same pixels give the same prediction, whatever their channels."""

import os

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from vitjax import checkpoints, models
from vitjax.deploy.classifier import Classifier
from vitjax.deploy.inputs import Preprocessing

# What configs/folder.py gives a folder of small images, grey or colour: no `to_rgb`, files are decoded to RGB.
FOLDER_PP_EVAL = "resize(8)|value_range(-1, 1)"


def _tiny_run(workdir: str, *, pp_eval: str, channels: int) -> None:
  """A workdir whose checkpoint is a CIFAR ResNet-20 at initialisation with a random head, no training."""
  config = ml_collections.ConfigDict(
    {"model": {"name": "resnet20"}, "data": {"pp_eval": pp_eval}, "loss": {"name": "softmax_xent"}}
  )
  model = models.from_config(config.model, num_classes=4)
  variables = models.init_variables(model, jax.random.key(0), image_shape=(8, 8, channels))
  params = jax.tree.map(np.asarray, variables["params"])
  params["head"]["kernel"] = np.asarray(jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape))
  manager = checkpoints.create_manager(workdir)
  checkpoints.save(manager, {"params": params, "batch_stats": variables["batch_stats"]}, step=1, meta={})
  manager.wait_until_finished()
  checkpoints.write_run_info(workdir, config, ["a", "b", "c", "d"])


def _as_files(images: list[np.ndarray], folder: str) -> list[str]:
  paths = []
  for i, image in enumerate(images):
    paths.append(os.path.join(folder, f"{i}.png"))
    tf.io.write_file(paths[-1], tf.io.encode_png(image if image.ndim == 3 else image[..., None]))
  return paths


def _images(shape: tuple[int, ...], count: int = 4, seed: int = 0) -> list[np.ndarray]:
  return list(np.random.RandomState(seed).randint(0, 256, (count, *shape), np.uint8))


@pytest.mark.parametrize("data", ["grey", "colour"])
def test_arrays_and_files_give_the_same_prediction_on_a_folder_model(data, tmp_path):
  workdir = str(tmp_path / "run")
  _tiny_run(workdir, pp_eval=FOLDER_PP_EVAL, channels=3)  # Folder runs see RGB whatever the files hold.
  clf = Classifier.load(workdir)
  if data == "grey":
    grey = _images((13, 11))  # Any size: the run's pp_eval resizes.
    arrays = {
      "HxW": grey,
      "HxWx1": [g[..., None] for g in grey],
      "HxWx3": [np.repeat(g[..., None], 3, -1) for g in grey],
    }
    files = _as_files(grey, str(tmp_path))
  else:
    colour = _images((9, 14, 3))
    arrays = {"HxWx3": colour, "HxWx4": [np.concatenate([c, np.full((9, 14, 1), 7, np.uint8)], -1) for c in colour]}
    files = _as_files(colour, str(tmp_path))
  from_files = clf.predict(files)
  assert from_files.shape == (4, 4) and len({tuple(p.round(3)) for p in from_files}) > 1  # Not one constant output.
  for layout, images in arrays.items():
    np.testing.assert_array_equal(clf.predict(images), from_files, err_msg=layout)
  np.testing.assert_array_equal(clf.predict(np.stack(next(iter(arrays.values())))), from_files)


def test_a_spec_that_decodes_to_grey_sets_the_channels_of_arrays_as_of_files(tmp_path):
  workdir = str(tmp_path / "run")
  _tiny_run(workdir, pp_eval=f"decode(channels=1)|{FOLDER_PP_EVAL}", channels=1)
  clf = Classifier.load(workdir)
  colour = _images((10, 12, 3), seed=1)
  np.testing.assert_array_equal(clf.predict(colour), clf.predict(_as_files(colour, str(tmp_path))))
  grey = _images((10, 12), seed=2)
  np.testing.assert_array_equal(clf.predict(grey), clf.predict(_as_files(grey, str(tmp_path))))


def test_a_model_that_does_not_take_the_specs_channels_says_what_to_change(tmp_path):
  workdir = str(tmp_path / "run")
  _tiny_run(workdir, pp_eval=FOLDER_PP_EVAL, channels=1)  # A one-channel model behind a spec that gives RGB.
  with pytest.raises(ValueError, match=r"shape \(8, 8, 3\).*decode\(channels=1\)"):
    Classifier.load(workdir).predict(_images((8, 8)))


def test_arrays_of_other_channel_counts_are_refused_with_their_shape():
  with pytest.raises(ValueError, match=r"1 to 4 channels, got uint8 \(8, 8, 5\)"):
    Preprocessing(FOLDER_PP_EVAL).pixels(np.zeros((8, 8, 5), np.uint8))
