"""What the workflow has done: `workflow_state.json` in the workdir records each finished stage's result and the
time spent so far, so that rerunning the same command skips finished stages and keeps to the same budget."""

import datetime
import json
import os
import re
import time
from typing import Any

from vitjax.errors import ConfigError

STATE_FILE = "workflow_state.json"
UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_budget(text: str) -> float:
  """Seconds of a budget such as ``30m``, ``1.5h``, ``90s`` or ``600``."""
  match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
  if not match:
    raise ConfigError(f"--budget={text!r} is not a duration; write e.g. 30m, 2h or 90s.")
  return float(match.group(1)) * UNITS[match.group(2) or "s"]


def _clock(seconds: float) -> str:
  return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


class State:
  """The state file of one workdir: finished stages, their results, and the seconds spent in earlier invocations."""

  def __init__(self, workdir: str, *, budget: float, shares: dict[str, float]):
    self.path, self.budget, self.shares = os.path.join(workdir, STATE_FILE), budget, dict(shares)
    self.record: dict[str, Any] = {"stages": {}, "seconds": 0.0}
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.record = json.load(f)
    self._started = time.time()

  def elapsed(self) -> float:
    """Seconds spent by this workflow, over every invocation."""
    return self.record["seconds"] + time.time() - self._started

  def done(self, stage: str) -> bool:
    return stage in self.record["stages"]

  def result(self, stage: str) -> Any:
    return self.record["stages"][stage]

  def deadline(self, stage: str) -> float:
    """The wall-clock time `stage` must end by: its share of the budget left, among the stages still to run."""
    left = [s for s in self.shares if not self.done(s)]
    share = self.shares.get(stage, 0.0) / max(sum(self.shares[s] for s in left), 1e-9) if stage in left else 1.0
    return time.time() + max(self.budget - self.elapsed(), 0.0) * share

  def finish(self, stage: str, result: Any, *, seconds: float) -> str:
    """Records `stage` as done (the file is replaced whole, so a kill leaves the old or the new one) and returns the
    progress line: the stage's time, the total against the budget and the ETA of the stages left."""
    self.record["stages"][stage] = result
    self.save()
    elapsed = self.elapsed()
    left = [s for s in self.shares if not self.done(s)]
    planned = sum(self.shares[s] for s in self.shares) or 1.0
    eta = min(self.budget * sum(self.shares[s] for s in left) / planned, max(self.budget - elapsed, 0.0))
    return (
      f"workflow: {stage} done in {_clock(seconds)} | elapsed {_clock(elapsed)} of {_clock(self.budget)} | "
      f"stages left: {', '.join(left) or 'none'} | ETA {_clock(eta)}"
    )

  def save(self) -> None:
    self.record["seconds"] = self.elapsed()
    self._started = time.time()
    temporary = f"{self.path}.tmp"
    with open(temporary, "w") as f:
      json.dump(self.record, f, indent=1)
    os.replace(temporary, self.path)
