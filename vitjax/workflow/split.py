"""A folder of class subfolders split into train/val/test, stable as the folder grows.

Each file's split is a function of a seeded hash of its bytes, drawn per class against the split fractions, so
adding images never moves existing ones, exact duplicates (same bytes) always land together, and every class is
split in the same proportions (in expectation). Existing ``train``/``val``/``test`` folders are respected: their
files keep their split and only the missing splits are drawn from ``train``. The result is `split.json` (every
file's split) and ``ROOT/<split>/<class>/<file>`` symlinks, the layout of the folder data source.
"""

import collections
import hashlib
import io
import json
import os
import shutil
from typing import Any

from PIL import Image

from vitjax.data.folders import IMAGE_EXTENSIONS
from vitjax.errors import ConfigError

SPLITS = ("train", "val", "test")
ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SPLIT_FILE = "split.json"


def scan(images: str) -> list[tuple[str, str, str | None]]:
  """(path, class, given split or None) of every image file under `images`, either layout."""
  given = {e: ALIASES[e] for e in sorted(os.listdir(images)) if e in ALIASES and os.path.isdir(os.path.join(images, e))}
  roots = [(os.path.join(images, e), s) for e, s in given.items()] if "train" in given.values() else [(images, None)]
  files = []
  for root, split in roots:
    for name in sorted(os.listdir(root)):
      class_dir = os.path.join(root, name)
      if name.startswith(".") or not os.path.isdir(class_dir):
        continue
      for entry in sorted(os.listdir(class_dir)):
        if entry.lower().endswith(IMAGE_EXTENSIONS) and not entry.startswith("."):
          files.append((os.path.join(class_dir, entry), name, split))
  if len({c for _, c, _ in files}) < 2:
    raise ConfigError(f"--images={images!r} needs one subfolder of images per class (at least two classes).")
  return files


def draw(digest: str, splits: tuple[str, ...], fractions: dict[str, float]) -> str:
  """The split a content hash falls in: its first 64 bits as a number in [0, 1) against the cumulative fractions."""
  u, total, edge = int(digest[:16], 16) / 2**64, sum(fractions[s] for s in splits), 0.0
  for split in splits:
    edge += fractions[split] / total
    if u < edge:
      return split
  return splits[-1]


def assign(images: str, *, fractions: dict[str, float], seed: int) -> dict[str, Any]:
  """Every readable file's split and class, the skipped files and the duplicate groups; see the module doc."""
  files, skipped, by_hash = [], [], collections.defaultdict(list)
  for path, class_name, given in scan(images):
    with open(path, "rb") as f:
      content = f.read()
    try:
      with Image.open(io.BytesIO(content)) as image:
        image.load()
    except (OSError, SyntaxError, ValueError) as e:
      skipped.append({"file": os.path.relpath(path, images), "reason": str(e)[:200]})
      continue
    digest = hashlib.sha256(f"{seed}:".encode() + content).hexdigest()
    files.append({"file": os.path.relpath(path, images), "class": class_name, "given": given, "hash": digest})
    by_hash[digest].append(files[-1])
  present = {f["given"] for f in files}
  drawn = ("train", *(s for s in SPLITS[1:] if s not in present)) if present != {None} else SPLITS
  for group in by_hash.values():
    givens = [f["given"] for f in group if f["given"] is not None]
    # A duplicate of a training image is never held out: the earliest split of the group takes every copy.
    fixed = min(givens, key=SPLITS.index) if givens else None
    split = draw(group[0]["hash"], drawn, fractions) if fixed in (None, "train") else fixed
    for f in group:
      f["split"] = split
  _every_class_trains(files)
  duplicates = [sorted(f["file"] for f in group) for group in by_hash.values() if len(group) > 1]
  conflicts = [d for d, group in by_hash.items() if len(group) > 1 and len({f["class"] for f in group}) > 1]
  return {"files": files, "skipped": skipped, "duplicates": duplicates, "conflicting_labels": len(conflicts)}


def _every_class_trains(files: list[dict[str, Any]]) -> None:
  """A class that drew no training file (a class of one or two images) trains on its first file by hash: the
  training split defines the classes."""
  by_class = collections.defaultdict(list)
  for f in files:
    by_class[f["class"]].append(f)
  for group in by_class.values():
    if not any(f["split"] == "train" for f in group):
      min(group, key=lambda f: f["hash"])["split"] = "train"


def summary(assignment: dict[str, Any], *, imbalance_threshold: float) -> dict[str, Any]:
  """Counts per split and class, the imbalance ratio (largest over smallest training class) and what it implies."""
  counts = {s: collections.Counter() for s in SPLITS}
  for f in assignment["files"]:
    counts[f["split"]][f["class"]] += 1
  train = counts["train"]
  ratio = max(train.values()) / max(min(train.values()), 1)
  return {
    "counts": {s: dict(sorted(c.items())) for s, c in counts.items()},
    "totals": {s: sum(c.values()) for s, c in counts.items()},
    "classes": sorted(train),
    "imbalance_ratio": round(ratio, 3),
    "imbalanced": ratio > imbalance_threshold,
    "duplicate_groups": len(assignment["duplicates"]),
    "duplicate_files": sum(len(d) for d in assignment["duplicates"]),
    "conflicting_labels": assignment["conflicting_labels"],
    "skipped": len(assignment["skipped"]),
  }


def materialise(images: str, assignment: dict[str, Any], root: str) -> None:
  """``root/<split>/<class>/<hash8>_<name>`` symlinks to the files (rebuilt whole, so no stale link stays)."""
  for split in SPLITS:
    shutil.rmtree(os.path.join(root, split), ignore_errors=True)
  for f in assignment["files"]:
    directory = os.path.join(root, f["split"], f["class"])
    os.makedirs(directory, exist_ok=True)
    link = os.path.join(directory, f"{f['hash'][:8]}_{os.path.basename(f['file'])}")
    if not os.path.lexists(link):  # The same bytes under the same name twice: one link serves both.
      os.symlink(os.path.abspath(os.path.join(images, f["file"])), link)


def split_folder(
  images: str, root: str, *, fractions: dict[str, float], seed: int, imbalance_threshold: float
) -> dict[str, Any]:
  """Splits `images` into `root` (symlinks and `root/split.json`); returns the summary the report shows."""
  if not os.path.isdir(images):
    raise ConfigError(f"--images={images!r} is not a folder.")
  if set(fractions) != set(SPLITS) or min(fractions.values()) <= 0:
    raise ConfigError(f"config.split.fractions must give train, val and test each a positive share, got {fractions}.")
  assignment = assign(images, fractions=fractions, seed=seed)
  os.makedirs(root, exist_ok=True)
  materialise(images, assignment, root)
  result = {"images": os.path.abspath(images), "seed": seed, "fractions": fractions}
  result.update(summary(assignment, imbalance_threshold=imbalance_threshold))
  with open(os.path.join(root, SPLIT_FILE), "w") as f:
    json.dump({**result, **assignment}, f, indent=1)
  return result
