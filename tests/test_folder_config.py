"""configs/folder.py: a user's own image folder, in either layout, gets defaults chosen from the images found."""

import math

import numpy as np
import pytest
from PIL import Image

from configs import folder
from vitjax.configs import common
from vitjax.train import optim
from vitjax.train.loop import total_steps, train_and_evaluate


def _write_images(class_dir, count, size, mode, suffix, seed):
  class_dir.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  channels = () if mode == "L" else (3,)
  for i in range(count):
    pixels = rng.integers(0, 256, (*size, *channels), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(class_dir / f"{i}{suffix}")


@pytest.fixture(scope="module")
def grey_scans(tmp_path_factory):
  """ROOT/<class>/<image>: 28x28 grey PNGs in three classes, no split folders."""
  root = tmp_path_factory.mktemp("scans") / "scans"
  for c, name in enumerate(["ankle_boot", "shirt", "trouser"]):
    _write_images(root / name, 12, (28, 28), "L", ".png", seed=c)
  return root


def test_small_grey_images_get_a_cifar_resnet_at_their_size(grey_scans):
  config = folder.get_config(str(grey_scans))
  assert config.model.name == "resnet20"
  assert config.data.folder == str(grey_scans.parent)
  assert (config.data.train_split, config.data.eval_split) == ("scans[:90%]", "scans[90%:]")
  # No mirror images of grey scans (digits and letters change under a flip); pad-and-crop by an eighth of the side.
  assert config.data.pp_train == "resize(28)|pad_and_crop(3)|value_range(-1, 1)"
  assert config.data.pp_eval == "resize(28)|value_range(-1, 1)"
  assert config.num_epochs == 100  # 36 images: the most epochs.
  assert (config.optimizer.name, config.optimizer.nesterov, config.optimizer.weight_decay_mode) == ("sgd", True, "l2")


def test_small_colour_images_are_also_flipped(tmp_path):
  for c, name in enumerate(["airplane", "frog"]):
    _write_images(tmp_path / "photos" / name, 3, (32, 32), "RGB", ".png", seed=c)
  config = folder.get_config(str(tmp_path / "photos"))
  assert config.data.pp_train == "resize(32)|pad_and_crop(4)|flip_lr|value_range(-1, 1)"


def test_large_images_under_split_folders_get_the_imagenet_recipe(tmp_path):
  for split, count in (("train", 4), ("val", 2)):
    for c, name in enumerate(["cat", "dog"]):
      _write_images(tmp_path / split / name, count, (120, 100), "RGB", ".jpg", seed=c)
  config = folder.get_config(str(tmp_path))
  assert config.model.name == "resnet50" and config.data.folder == str(tmp_path)
  assert (config.data.train_split, config.data.eval_split) == ("train", "val")
  assert config.data.pp_train.startswith("inception_crop(224)|flip_lr|normalize(")
  assert config.data.pp_eval.startswith("resize_small(256)|center_crop(224)|normalize(")


def test_bad_folders_fail_naming_the_layout(tmp_path):
  with pytest.raises(ValueError, match="needs the image folder"):
    folder.get_config("runlocal")
  with pytest.raises(ValueError, match="is not a folder"):
    folder.get_config(str(tmp_path / "missing"))
  _write_images(tmp_path / "only_class", 2, (8, 8), "L", ".png", seed=0)
  with pytest.raises(ValueError, match="one subfolder of images per class"):
    folder.get_config(str(tmp_path))


def test_runlocal_trains_on_the_folder(grey_scans, tmp_path):
  config = folder.get_config(f"{grey_scans},runlocal")
  assert config.name == "folder_scans_runlocal" and config.batch_size == common.RUNLOCAL_BATCH
  config.total_steps = 2
  results = train_and_evaluate(config, str(tmp_path / "workdir"))
  assert results["step"] == 2 and math.isfinite(results["loss"])


def test_a_shortened_run_still_reaches_the_peak_rate_and_decays(tmp_path):
  for c in range(3):  # 1,500 training images, 500 per class, beside a test split.
    _write_images(tmp_path / "train" / f"class_{c}", 500, (8, 8), "L", ".png", seed=c)
    _write_images(tmp_path / "test" / f"class_{c}", 1, (8, 8), "L", ".png", seed=c)
  config = folder.get_config(str(tmp_path))
  config.num_epochs = 10.0  # As --config.num_epochs=10 does: after get_config.
  steps = total_steps(config, 1500)
  assert steps == 118 and config.eval_every == config.checkpoint_every == 30  # Four evaluations, the last at the end.
  schedule = optim.create_learning_rate_fn(config.schedule, base_learning_rate=0.1, total_steps=steps)
  learning_rates = np.array([float(schedule(step)) for step in range(steps + 1)])
  assert learning_rates.max() == pytest.approx(0.1) and 0 < learning_rates.argmax() < steps // 4
  assert learning_rates[-1] < 1e-6 and np.all(np.diff(learning_rates[learning_rates.argmax() :]) <= 0)
