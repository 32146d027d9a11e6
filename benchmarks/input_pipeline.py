"""Input-pipeline throughput on this host's CPUs: training images/s of ImageNet-style and CIFAR-style pipelines.

    python benchmarks/input_pipeline.py --threads 1,2 --seconds 20

Generates its own data in a temporary folder: 500x375 JPEGs with ImageNet-like file sizes (a smooth random field
plus noise, quality 90, about 100 KB each) and 32x32 PNGs, each written both as a TFDS dataset and as a folder
dataset, then times ``vitjax.data.train_dataset`` (shuffle, decode, augment, batch) with tf.data limited to N
threads (``config.data.threads``, i.e. ``options.threading.private_threadpool_size``). It reports wall-clock
images/s and images per CPU-second of the whole process (all its threads, the consuming Python loop included):
the second is the per-core rate, and stays meaningful on a host shared with other jobs. Prints a table and one
JSON line per measurement.
"""

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vitjax import use_xla_cpu_emitters  # noqa: E402

use_xla_cpu_emitters()  # As the command-line entry points do; before the first JAX computation.
from vitjax import data  # noqa: E402
from vitjax.configs import common  # noqa: E402
from vitjax.data.folders import FolderSource  # noqa: E402
from vitjax.data.tfds_source import TfdsSource  # noqa: E402

IMAGENET_AUGMENT = "flip_lr|randaugment(2, 15)|value_range(-1, 1)"
PIPELINES = {
  # name: (dataset kind, pp_train, batch size); the "cached" ones keep decoded examples in memory (data.cache).
  "imagenet tfds fused-crop": ("jpeg", f"decode_jpeg_and_inception_crop(224)|{IMAGENET_AUGMENT}", 64),
  "imagenet tfds decode+crop": ("jpeg", f"decode|inception_crop(224)|{IMAGENET_AUGMENT}", 64),
  "imagenet folder": ("jpeg_folder", f"inception_crop(224)|{IMAGENET_AUGMENT}", 64),
  "imagenet tfds no-randaug": ("jpeg", "decode_jpeg_and_inception_crop(224)|flip_lr|value_range(-1, 1)", 64),
  "cifar tfds pad-crop": ("png32", "decode|pad_and_crop(4)|flip_lr|value_range(-1, 1)", 256),
  "cifar tfds vit-384": ("png32", "decode|resize(448)|random_crop(384)|flip_lr|value_range(-1, 1)", 64),
  "digits quickstart cached": ("digits", "pad_and_crop(1)|resize(32, method='nearest')|to_rgb|value_range(-1, 1)", 64),
}


def synthetic_photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A smooth random colour field with texture noise: JPEG sizes close to ImageNet's at 500x375."""
  coarse = rng.integers(0, 256, (height // 25 + 2, width // 25 + 2, 3), dtype=np.uint8)
  field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
  return np.clip(field + rng.normal(0, 14, field.shape), 0, 255).astype(np.uint8)


def write_images(root: str, *, count: int, height: int, width: int, fmt: str, classes: int = 10) -> None:
  rng = np.random.default_rng(0)
  for i in range(count):
    folder = os.path.join(root, "train", f"class{i % classes}")
    os.makedirs(folder, exist_ok=True)
    image = Image.fromarray(
      synthetic_photo(rng, height, width) if height > 64 else rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    )
    image.save(os.path.join(folder, f"{i}.{fmt}"), **({"quality": 90} if fmt == "jpg" else {}))


def tfds_builder(name: str, image_root: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """A TFDS dataset holding the files under ``image_root`` unchanged (their encoded bytes)."""
  files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(image_root, "train")) for f in fs)
  classes = sorted({os.path.basename(os.path.dirname(f)) for f in files})

  features = tfds.features.FeaturesDict(
    {
      "image": tfds.features.Image(encoding_format="jpeg" if files[0].endswith(".jpg") else "png"),
      "label": tfds.features.ClassLabel(names=classes),
    }
  )
  examples = tf.data.Dataset.from_tensor_slices(
    {
      "image": [open(path, "rb").read() for path in files],
      "label": [classes.index(os.path.basename(os.path.dirname(path))) for path in files],
    }
  )
  return tfds.dataset_builders.store_as_tfds_dataset(
    name=name, version="1.0.0", features=features, split_datasets={"train": examples}, data_dir=data_dir
  )


def measure(source, pp: str, *, batch_size: int, threads: int, seconds: float, cache: bool) -> dict[str, float]:
  config = common.get_base_config().data
  config.update({"pp_train": pp, "shuffle_buffer": 1000, "threads": threads, "cache": cache})
  batches = data.as_numpy(data.train_dataset(source, config, batch_size=batch_size, seed=0))
  for _ in range(3):  # Tracing, thread start-up and the first shuffle-buffer fill.
    next(batches)
  count, start, cpu_start = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - start < seconds:
    count += len(next(batches)["labels"])
  elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  return {
    "images_per_s": count / elapsed,
    "images_per_cpu_s": count / cpu,
    "images": count,
    "seconds": elapsed,
    "cpu_seconds": cpu,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--threads", default="1,2", help="Comma-separated tf.data thread counts.")
  parser.add_argument("--seconds", type=float, default=20.0, help="Timed seconds per measurement.")
  parser.add_argument("--jpegs", type=int, default=500)
  parser.add_argument("--pipelines", default=",".join(PIPELINES), help="Comma-separated names from PIPELINES.")
  args = parser.parse_args()
  tf.config.set_visible_devices([], "GPU")

  work = tempfile.mkdtemp(prefix="vitjax_input_bench_")
  jpeg_root, png_root = os.path.join(work, "jpeg"), os.path.join(work, "png32")
  write_images(jpeg_root, count=args.jpegs, height=375, width=500, fmt="jpg")
  write_images(png_root, count=4096, height=32, width=32, fmt="png")
  jpeg_bytes = np.mean([os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(jpeg_root) for f in fs])
  inputs = {
    "jpeg": TfdsSource(tfds_builder("bench_jpeg", jpeg_root, os.path.join(work, "tfds"))),
    "png32": TfdsSource(tfds_builder("bench_png32", png_root, os.path.join(work, "tfds"))),
    "jpeg_folder": FolderSource(jpeg_root),
    "digits": data.builder_by_name("vitjax_digits", data_dir=os.path.join(work, "tfds")),
  }
  data.prepare(inputs["digits"])
  print(
    f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start, "
    f"mean JPEG {jpeg_bytes / 1e3:.0f} KB, tf {tf.__version__}",
    flush=True,
  )
  print(f"{'pipeline':28s} {'threads':>7s} {'images/s':>9s} {'images/CPU-s':>12s}", flush=True)
  for name in args.pipelines.split(","):
    kind, pp, batch_size = PIPELINES[name]
    for threads in (int(t) for t in args.threads.split(",")):
      result = measure(
        inputs[kind], pp, batch_size=batch_size, threads=threads, seconds=args.seconds, cache=name.endswith("cached")
      )
      print(f"{name:28s} {threads:7d} {result['images_per_s']:9.1f} {result['images_per_cpu_s']:12.1f}", flush=True)
      print(
        json.dumps(
          {
            "pipeline": name,
            "pp": pp,
            "threads": threads,
            "batch_size": batch_size,
            "load_average": os.getloadavg()[0],
            **result,
          }
        ),
        flush=True,
      )


if __name__ == "__main__":
  main()
