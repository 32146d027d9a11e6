"""Your own folder of images (``configs/folder.py``): defaults picked from the images found there.

    python -m vitjax.main --config=configs/folder.py:/data/my_images --workdir=/tmp/my_images

The folder holds one subfolder per class, either directly (``ROOT/<class>/<image>``: the last 10% of a fixed random
order is held out for evaluation) or under split folders (``ROOT/train/<class>/<image>`` and ``ROOT/test``, ``val``,
``validation`` or ``valid`` beside it). A few images are opened to see their size and colour:
- small images (both sides at most 64 pixels, e.g. 28x28 grey scans or 32x32 photos): a CIFAR-style ResNet-20 at
  the images' own size, pad-and-crop by an eighth of the side, horizontal flips for colour images only (grey ones
  are mostly digits, letters and scans, which a mirror changes), SGD with Nesterov momentum, cosine decay;
- larger ones: ResNet-50 on 224-pixel Inception crops with flips and ImageNet mean/std, evaluated on a central crop
  of a 256-pixel resize (the Flax ImageNet recipe; from scratch this needs an accelerator or pretrained weights:
  ``--config.pretrained.path=resnet50.safetensors``).
The number of epochs falls with the folder's size (about 150,000 training images seen in all for small images,
between 2 and 100 epochs: 2 on an MNIST-sized folder of 60,000). Time and accuracy on a folder of real handwritten
digits are in benchmarks/RESULTS.md. Every choice can be overridden with ``--config.KEY=VALUE``.
"""

import os
import statistics

from PIL import Image

from vitjax.configs import common
from vitjax.errors import ConfigError

EVAL_SPLITS = ("test", "val", "validation", "valid")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SMALL = 64  # Pixels: images whose sides are all at most this train at their own size with a CIFAR-style ResNet.
PROBE_IMAGES = 32
# Training images seen on small images: ResNet-20 runs at about 230 images/s on 2 CPU cores (28x28), so about ten
# minutes there; 2 epochs at least, 100 at most.
SMALL_IMAGES_SEEN = 150_000
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL's single-channel modes (with or without alpha).
# Warmup shares of the run: 200 of the about 1,170 steps of a default small-image run; the ImageNet recipe's 5 of its
# epochs, at most a quarter of a short run.
SMALL_WARMUP_FRACTION = 0.17
MAX_LARGE_WARMUP_FRACTION = 0.25
EVALS_PER_RUN = 4  # A run evaluates (and checkpoints) about this many times, the last at its end, whatever its length.


def get_config(arg: str | None = None):
  """The run for the image folder named by the argument (``ROOT`` or ``ROOT,runlocal``)."""
  root, local = common.split_runlocal(arg)
  if not root:
    raise ConfigError("configs/folder.py needs the image folder: --config=configs/folder.py:/path/to/images")
  root = os.path.abspath(os.path.expanduser(root))
  folder, train_split, eval_split, class_dirs = _layout(root)
  probed = [_image_info(path) for path in _probe_files(class_dirs)]
  sizes, colour = [size for size, _ in probed], any(is_colour for _, is_colour in probed)
  config = common.get_base_config()
  config.name = f"folder_{os.path.basename(root)}"
  config.data.dataset = "folder"
  config.data.folder = folder
  config.data.train_split, config.data.eval_split = train_split, eval_split
  num_train = sum(len(_images(d)) for d in class_dirs)
  if max(max(size) for size in sizes) <= SMALL:
    side = round(statistics.median(max(size) for size in sizes))
    _small_images(config, side=side, colour=colour, num_train=num_train)
  else:
    _large_images(config, num_train=num_train)
  return common.runlocal(config) if local else config


def _small_images(config, *, side: int, colour: bool, num_train: int) -> None:
  """CIFAR recipe (He et al. 2016): ResNet-20, pad-and-crop (+ flip for colour), SGD 0.1 for batch 128, weight
  decay 5e-4."""
  config.model.name = "resnet20"
  flip = "flip_lr|" if colour else ""
  config.data.pp_train = f"resize({side})|pad_and_crop({max(side // 8, 1)})|{flip}value_range(-1, 1)"
  config.data.pp_eval = f"resize({side})|value_range(-1, 1)"
  config.data.cache = num_train * side * side * 3 < 2**31  # Decoded examples kept in memory below 2 GB.
  config.batch_size = config.eval_batch_size = 128
  config.num_epochs = float(min(max(round(SMALL_IMAGES_SEEN / num_train), 2), 100))
  _sgd(config, learning_rate=0.1, weight_decay=5e-4, warmup_fraction=SMALL_WARMUP_FRACTION, num_train=num_train)


def _large_images(config, *, num_train: int) -> None:
  """Flax ImageNet recipe: ResNet-50, Inception crop + flip, mean/std, SGD 0.1 x batch / 256, 5 warmup epochs."""
  config.model.name = "resnet50"
  normalize = "normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))"
  config.data.pp_train = f"inception_crop(224)|flip_lr|{normalize}"
  config.data.pp_eval = f"resize_small(256)|center_crop(224)|{normalize}"
  config.batch_size = config.eval_batch_size = 256
  config.num_epochs = float(min(max(round(1_000_000 / num_train), 3), 90))
  warmup_fraction = min(5 / config.num_epochs, MAX_LARGE_WARMUP_FRACTION)
  _sgd(config, learning_rate=0.1, weight_decay=1e-4, warmup_fraction=warmup_fraction, num_train=num_train)


def _sgd(config, *, learning_rate: float, weight_decay: float, warmup_fraction: float, num_train: int) -> None:
  """SGD with Nesterov momentum and cosine decay; warmup and the eval and checkpoint intervals are shares of the
  run, so that `--config.num_epochs=N` (or `batch_size`) keeps the schedule's shape and the number of evaluations."""
  config.optimizer.name = "sgd"
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.learning_rate = learning_rate
  config.optimizer.weight_decay = weight_decay
  config.optimizer.weight_decay_mode = "l2"  # As the torch recipes: added to the gradient before momentum.
  config.optimizer.grad_clip_norm = 0.0
  config.schedule.name = "cosine"
  config.schedule.warmup_fraction = warmup_fraction
  config.log_every = 100
  # Lazy references: read after the command line's overrides; a quarter of the run, rounded up (at least 1).
  run_steps = config.get_ref("num_epochs") * num_train / config.get_ref("batch_size")
  config.eval_every = config.checkpoint_every = (run_steps / EVALS_PER_RUN + 1).to_int()


def _layout(root: str) -> tuple[str, str, str, list[str]]:
  """(data.folder, train split, eval split, the training class folders) for either folder layout."""
  if not os.path.isdir(root):
    raise ConfigError(f"configs/folder.py: {root!r} is not a folder.")
  if os.path.isdir(os.path.join(root, "train")):
    train_dir = os.path.join(root, "train")
    held_out = [name for name in EVAL_SPLITS if os.path.isdir(os.path.join(root, name))]
    splits = ("train", held_out[0]) if held_out else ("train[:90%]", "train[90%:]")
    return root, *splits, _class_dirs(train_dir)
  # Classes directly under ROOT: ROOT itself is the split folder the folder source reads.
  name = os.path.basename(root)
  return os.path.dirname(root), f"{name}[:90%]", f"{name}[90%:]", _class_dirs(root)


def _class_dirs(split_dir: str) -> list[str]:
  dirs = [os.path.join(split_dir, e) for e in sorted(os.listdir(split_dir)) if not e.startswith(".")]
  dirs = [d for d in dirs if os.path.isdir(d) and _images(d)]
  if len(dirs) < 2:
    raise ConfigError(
      f"configs/folder.py: {split_dir!r} needs one subfolder of images per class (at least two classes), "
      "as <root>/<class>/<image> or <root>/train/<class>/<image>."
    )
  return dirs


def _images(class_dir: str) -> list[str]:
  return [e for e in os.listdir(class_dir) if e.lower().endswith(IMAGE_EXTENSIONS) and not e.startswith(".")]


def _probe_files(class_dirs: list[str]) -> list[str]:
  """Up to PROBE_IMAGES images, taken round-robin over the classes so every class is looked at."""
  per_class = [sorted(_images(d))[: PROBE_IMAGES // len(class_dirs) + 1] for d in class_dirs]
  files = [os.path.join(d, name) for names, d in zip(per_class, class_dirs, strict=True) for name in names]
  return files[:PROBE_IMAGES]


def _image_info(path: str) -> tuple[tuple[int, int], bool]:
  """((height, width), whether it has colour channels) of an image file, from its header; an unreadable file names
  itself."""
  try:
    with Image.open(path) as image:
      return (image.height, image.width), image.mode not in GREY_MODES
  except OSError as e:
    raise ConfigError(f"configs/folder.py: cannot read image {path!r} ({e}).") from None
