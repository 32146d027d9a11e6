"""The run's metric history: `metrics.jsonl` in the workdir, one JSON record per train log or evaluation."""

import json
import os
from typing import Any


def read(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def append(path: str, record: dict[str, Any]) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def truncate(path: str, *, after_step: int) -> None:
  """Drops records newer than ``after_step``: after a resume they are about to be written again."""
  kept = [r for r in read(path) if r["step"] <= after_step]
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in kept)
