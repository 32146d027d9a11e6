"""Data sources: folders of images (single- and multi-label), bad files, per-process eval shares, TFDS feature keys,
and a few training steps on a folder with a corrupt file."""

import http.server
import logging
import os
import socket
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import quickstart
from vitjax import data
from vitjax.configs import common
from vitjax.data import tfds_source
from vitjax.train import loop

SIZE = 12


def _image(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _write(path, array: np.ndarray, mode: str | None = None) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(array)
  Image.Image.save(image.convert(mode) if mode else image, path)


def _make_folder(root, *, train_per_class=6, test_per_class=3, corrupt=True):
  """root/{train,test}/{cat,dog,fish}/ with lossless PNG/BMP/GIF-free RGB content plus a few special files.

  Returns {split: {file content bytes: class id}} for the readable, exactly-decodable files.
  """
  expected = {"train": {}, "test": {}}
  seed = 0
  for split, per_class in (("train", train_per_class), ("test", test_per_class)):
    for label, name in enumerate(("cat", "dog", "fish")):
      for i in range(per_class):
        seed += 1
        array = _image(seed)
        _write(os.path.join(root, split, name, f"{i}.{'png' if i % 2 else 'bmp'}"), array)
        expected[split][array.tobytes()] = label
  # Grayscale and RGBA files become RGB; a JPEG is decodable but lossy, so it is counted but not compared.
  gray = _image(1000)[..., 0]
  _write(os.path.join(root, "train", "dog", "gray.png"), gray)
  expected["train"][np.repeat(gray[..., None], 3, -1).tobytes()] = 1
  rgba = np.concatenate([_image(1001), np.full((SIZE, SIZE, 1), 40, np.uint8)], -1)
  _write(os.path.join(root, "train", "fish", "alpha.png"), rgba)
  expected["train"][rgba[..., :3].tobytes()] = 2
  _write(os.path.join(root, "train", "cat", "photo.JPG"), _image(1002))
  with open(os.path.join(root, "train", "cat", "notes.txt"), "w") as f:
    f.write("not an image, ignored")
  if corrupt:
    with open(os.path.join(root, "train", "cat", "broken.jpg"), "wb") as f:
      f.write(b"\xff\xd8\xff\xe0 truncated")
    with open(os.path.join(root, "test", "dog", "broken.png"), "wb") as f:
      f.write(b"\x89PNG\r\n\x1a\n garbage")
  return expected


def _config(root, **overrides):
  """The base data config (every key the library reads) for a folder dataset at ``root``, with ``overrides``."""
  config = common.get_base_config().data
  config.update(
    {"dataset": "folder", "folder": str(root), "pp_train": "flip_lr", "pp_eval": f"resize({SIZE}, method='nearest')"}
  )
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("folder")
  return root, _make_folder(root)


def _eval_examples(source, config, *, process_count=1, split=None):
  examples, masked = [], 0
  for index in range(process_count):
    for batch in data.as_numpy(
      data.eval_dataset(source, config, batch_size=8, split=split, process_index=index, process_count=process_count)
    ):
      real = batch["mask"] == 1
      masked += int((batch["mask"] == 0).sum())
      examples += [
        (img.astype(np.uint8).tobytes(), int(lab.argmax()))
        for img, lab in zip(batch["image"][real], batch["labels"][real])
      ]
  return examples, masked


def test_folder_classes_sizes_and_rgb_conversion(folder):
  root, expected = folder
  source = data.from_config(_config(root))
  data.prepare(source)
  assert data.class_names(source) == ["cat", "dog", "fish"] and data.num_classes(source) == 3
  assert data.num_examples(source, "train") == 18 + 4  # gray, alpha, photo.JPG and broken.jpg; notes.txt ignored.
  assert data.num_examples(source, "test") == 9 + 1
  examples, masked = _eval_examples(source, _config(root), split="train")
  decoded = dict(examples)
  assert all(decoded[content] == label for content, label in expected["train"].items())  # Gray, RGBA included.
  assert len(examples) == 21 and masked == 8 * 3 - 21  # The corrupt file is masked out, the rest is padding.


@pytest.mark.parametrize("process_count", [1, 2])
def test_folder_eval_shares_cover_the_split_exactly_once(folder, process_count):
  root, expected = folder
  source = data.from_config(_config(root))
  examples, _ = _eval_examples(source, _config(root), process_count=process_count)
  assert sorted(examples) == sorted(expected["test"].items())  # The corrupt file is the only one missing.


def test_split_slices_are_disjoint_and_cover_the_folder(folder):
  root, _ = folder
  config = _config(root, pp_eval=f"resize({SIZE}, method='nearest')")
  source = data.from_config(config)
  first, _ = _eval_examples(source, config, split="train[:50%]")
  second, _ = _eval_examples(source, config, split="train[50%:]")
  whole, _ = _eval_examples(source, config, split="train")
  assert not set(first) & set(second) and sorted(first + second) == sorted(whole)
  assert len({label for _, label in first}) > 1  # Slices mix classes: files are ordered by a hash.


def test_corrupt_file_is_skipped_logged_and_resume_stays_exact(folder, caplog):
  root, _ = folder
  config = _config(root)
  source = data.from_config(config)
  with caplog.at_level(logging.WARNING):
    stream = data.as_numpy(data.train_dataset(source, config, batch_size=8, seed=1))
    full = [next(stream) for _ in range(9)]  # 72 examples: three passes over the 22 files.
  assert "broken.jpg" in caplog.text and "skipped so far" in caplog.text
  assert all(set(batch) == {"image", "labels"} for batch in full)
  resumed = data.as_numpy(data.train_dataset(source, config, batch_size=8, seed=1, start_batch=6))
  for expected_batch in full[6:]:
    batch = next(resumed)
    np.testing.assert_array_equal(batch["image"], expected_batch["image"])
    np.testing.assert_array_equal(batch["labels"], expected_batch["labels"])


def test_strict_mode_fails_at_once_naming_the_file(folder):
  root, _ = folder
  config = _config(root, strict=True)
  stream = data.as_numpy(data.train_dataset(data.from_config(config), config, batch_size=22, seed=0))
  with pytest.raises(data.UnreadableImageError, match=r"strict=True.*train/cat/broken\.jpg"):
    next(stream)


def test_classes_select_folders_by_name_or_id(folder):
  root, expected = folder
  config = _config(root, classes=("fish", 0))
  source = data.from_config(config)
  assert data.class_names(source) == ["fish", "cat"] and data.num_examples(source, "test") == 6
  examples, _ = _eval_examples(source, config)
  remap = {2: 0, 0: 1}
  assert sorted(examples) == sorted((c, remap[label]) for c, label in expected["test"].items() if label in remap)


def _broken_layout(root, case):
  for split in ("train", "test"):
    for name in ("a", "b"):
      _write(os.path.join(root, split, name, "0.png"), _image(0))
  if case == "empty class folder":
    os.makedirs(os.path.join(root, "train", "c"))
  elif case == "split without images":
    for name in ("a", "b"):
      os.remove(os.path.join(root, "test", name, "0.png"))
      os.rmdir(os.path.join(root, "test", name))
  elif case == "missing split":
    os.rename(os.path.join(root, "test"), os.path.join(root, "validation"))
  elif case == "images without class folders":
    _write(os.path.join(root, "test", "loose.png"), _image(1))
  elif case == "unknown eval class":
    _write(os.path.join(root, "test", "zebra", "0.png"), _image(2))


@pytest.mark.parametrize(
  "case, message",
  [
    ("empty class folder", r"Class folder '.*train/c' has no images"),
    ("split without images", r"Split 'test' has no images"),
    ("missing split", r"No folder '.*test' for split 'test' \(found in .*\['train', 'validation'\]\)"),
    ("images without class folders", r"holds images directly \('loose.png'"),
    ("unknown eval class", r"Split 'test' .* has classes \['zebra'\] that the training split 'train' lacks"),
  ],
)
def test_bad_folder_layouts_fail_before_training(tmp_path, case, message):
  _broken_layout(tmp_path, case)
  with pytest.raises(ValueError, match=message):
    data.prepare(data.from_config(_config(tmp_path)))


def _make_multilabel(root):
  tags = {"a.png": "sky;tree", "b.png": "tree", "c.png": "", "sub/d.png": "water;sky;tree"}
  contents = {}
  for i, name in enumerate(tags):
    contents[name] = _image(50 + i)
    _write(os.path.join(root, "train", name), contents[name])
  with open(os.path.join(root, "train.csv"), "w") as f:
    f.write("filename,labels\n" + "".join(f"{name},{t}\n" for name, t in tags.items()))
  _write(os.path.join(root, "val", "e.png"), _image(60))
  with open(os.path.join(root, "val.csv"), "w") as f:
    f.write("e.png,water\n")
  return contents


def test_multilabel_folder_gives_multi_hot_targets(tmp_path):
  contents = _make_multilabel(tmp_path)
  config = _config(tmp_path, dataset="multilabel_folder", eval_split="val")
  source = data.from_config(config)
  data.prepare(source)
  assert data.class_names(source) == ["sky", "tree", "water"]
  targets = {}
  for batch in data.as_numpy(data.eval_dataset(source, config, batch_size=8, split="train")):
    for img, labels, mask in zip(batch["image"], batch["labels"], batch["mask"]):
      if mask:
        targets[img.astype(np.uint8).tobytes()] = labels.tolist()
  assert targets == {
    contents["a.png"].tobytes(): [1, 1, 0],
    contents["b.png"].tobytes(): [0, 1, 0],
    contents["c.png"].tobytes(): [0, 0, 0],
    contents["sub/d.png"].tobytes(): [1, 1, 1],
  }
  batch = next(data.as_numpy(data.train_dataset(source, config, batch_size=8, seed=0)))
  assert batch["labels"].shape == (8, 3) and set(np.unique(batch["labels"])) <= {0.0, 1.0}
  narrowed = data.from_config(_config(tmp_path, dataset="multilabel_folder", eval_split="val", classes=("tree",)))
  assert data.class_names(narrowed) == ["tree"] and data.num_examples(narrowed, "train") == 4


@pytest.mark.parametrize(
  "row, message",
  [
    ("missing.png,sky", r"train.csv, line 6: 'missing.png' is not a file in"),
    ("a.png,sky", r"line 6: 'a.png' already appears on line 2"),
    ("a.png", r"line 6: expected 'filename,label1;label2'"),
  ],
)
def test_bad_csv_rows_fail_before_training(tmp_path, row, message):
  _make_multilabel(tmp_path)
  with open(os.path.join(tmp_path, "train.csv"), "a") as f:
    f.write(row + "\n")
  with pytest.raises(ValueError, match=message):
    data.prepare(data.from_config(_config(tmp_path, dataset="multilabel_folder", eval_split="val")))


class TaggedSquares(tfds.core.GeneratorBasedBuilder):
  """Squares whose pixel value is the example's number, a 3-way 'kind' and a variable set of 4 'tags'."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "picture": tfds.features.Image(shape=(4, 4, 3)),
          "kind": tfds.features.ClassLabel(names=["a", "b", "c"]),
          "tags": tfds.features.Sequence(tfds.features.ClassLabel(names=["w", "x", "y", "z"])),
        }
      )
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(16):
      yield (
        i,
        {"picture": np.full((4, 4, 3), i, np.uint8), "kind": i % 3, "tags": [t for t in range(4) if (i >> t) & 1]},
      )


def test_tfds_feature_keys_single_and_multi_label(tmp_path):
  builder = TaggedSquares(data_dir=str(tmp_path))
  builder.download_and_prepare()
  base = {
    "dataset": "tagged_squares",
    "data_dir": str(tmp_path),
    "image_key": "picture",
    "eval_split": "train",
    "pp_eval": "value_range(0, 255)",
  }
  for label_key, expected in (
    ("kind", lambda i: np.eye(3)[i % 3]),
    ("tags", lambda i: [(i >> t) & 1 for t in range(4)]),
  ):
    config = _config(tmp_path, **base, label_key=label_key)
    source = data.from_config(config)
    seen = {}
    for batch in data.as_numpy(data.eval_dataset(source, config, batch_size=8)):
      for img, labels in zip(batch["image"], batch["labels"]):
        seen[int(img[0, 0, 0])] = labels.tolist()
    assert seen == {i: list(map(float, expected(i))) for i in range(16)}
  with pytest.raises(ValueError, match=r"label_key='label' is not a feature of 'tagged_squares'.*kind, tags"):
    data.from_config(_config(tmp_path, **base, label_key="label"))


class _NotFound(http.server.BaseHTTPRequestHandler):
  def do_HEAD(self):  # Upper case: the name http.server dispatches HEAD requests to.
    self.send_response(404)
    self.end_headers()

  def log_message(self, *args):
    pass


def test_download_probe_takes_any_http_answer_and_names_a_dead_host():
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  with socket.socket() as closed:  # A port that nothing listens on once the socket is closed.
    closed.bind(("127.0.0.1", 0))
    dead = closed.getsockname()[1]
  try:
    answering = f"http://127.0.0.1:{server.server_address[1]}/missing.tar"
    assert tfds_source.first_unreachable([answering, answering + "?again", "ftp://example.invalid/x"]) is None
    failure = tfds_source.first_unreachable([answering, f"http://127.0.0.1:{dead}/a.tar"], timeout=5)
    assert failure.startswith(f"127.0.0.1:{dead} did not answer: NewConnectionError") and "refused" in failure
    with socket.socket() as silent:  # Accepts connections (the listen backlog) but never answers.
      silent.bind(("127.0.0.1", 0))
      silent.listen()
      start = time.monotonic()
      failure = tfds_source.first_unreachable([f"http://127.0.0.1:{silent.getsockname()[1]}/a.tar"], timeout=1)
      assert "did not answer" in failure and time.monotonic() - start < 3
  finally:
    server.shutdown()


def test_no_probe_when_tfds_can_reuse_files_on_disk(tmp_path):
  builder = data.builder_by_name("mnist", data_dir=str(tmp_path)).builder
  urls = tfds_source.urls_to_download(builder)
  assert len(urls) == 4 and all(url.startswith("https://storage.googleapis.com/") for url in urls)
  manual = tmp_path / "downloads" / "manual"
  manual.mkdir(parents=True)
  (manual / builder.url_infos[urls[0]].filename).write_bytes(b"")
  assert tfds_source.urls_to_download(builder) == urls[1:]
  (tmp_path / "downloads" / "mnist").mkdir()
  (tmp_path / "downloads" / "mnist" / "file.gz.INFO").write_text("{}")
  assert tfds_source.urls_to_download(builder) == []


def test_training_on_a_folder_with_a_corrupt_file(tmp_path, caplog):
  root = tmp_path / "images"
  expected = _make_folder(root, train_per_class=4, test_per_class=2)
  config = quickstart.get_config()
  config.data.dataset = "folder"
  config.data.folder = str(root)
  config.data.pp_train = "resize(16)|flip_lr|value_range(-1, 1)"
  config.data.pp_eval = "resize(16)|value_range(-1, 1)"
  config.data.mixup.mixup_alpha = 0.2
  config.batch_size = config.eval_batch_size = 16
  config.total_steps = 4
  config.schedule.warmup_steps = 0
  with caplog.at_level(logging.WARNING):
    results = loop.train_and_evaluate(config, str(tmp_path / "workdir"))
  assert results["step"] == 4 and np.isfinite(results["loss"])
  assert results["num_examples"] == len(expected["test"])  # The corrupt test image is masked out.
  assert "broken.jpg" in caplog.text and "skipped so far" in caplog.text
  assert "broken.png" in caplog.text and "unreadable files or failed records were skipped in this pass" in caplog.text
