"""benchmarks/accelerator.py end to end on tiny shapes: every training and inference row runs, and the knobs leave
the function alone."""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import accelerator  # noqa: E402


def test_accelerator_benchmark_tiny_runs_every_row(tmp_path, capsys):
  path = str(tmp_path / "rows.json")
  tables = accelerator.main(["--tiny", "--budget_s=1e9", "--json", path])
  assert json.load(open(path)) == tables
  rows = tables["train"]
  assert [(r["model"], r["attention"], r["remat"], r["scan"]) for r in rows] == [
    ("vit_b16", "explicit", "none", False),
    ("vit_b16", "xla", "none", False),
    ("vit_b16", "xla", "dots_saveable", False),
    ("vit_b16", "xla", "full", False),
    ("vit_b16", "xla", "none", True),
    ("resnet50", "-", "none", False),
  ]
  assert all("error" not in r and r["images_per_s"] > 0 and 0 < r["mfu"] < 1 for r in rows), rows
  # Same parameters and data: attention implementation and remat change nothing but speed (bfloat16 rounding).
  unrolled = [r["loss"] for r in rows[:4]]
  np.testing.assert_allclose(unrolled, unrolled[0], rtol=1e-2)
  printed = capsys.readouterr().out
  assert "| vit_b16 | 2 | explicit | none | False |" in printed
  inference = tables["inference"]
  assert [r["model"] for r in inference] == ["vit_b16", "resnet50"] and "| resnet50 | " in printed.split("batch-1")[-1]
  for row in inference:
    assert "error" not in row and 0 < row["latency_ms"] <= row["p90_ms"] and row["images_per_s"] > 0, row
  late = accelerator.run_inference(accelerator.TINY, budget_s=-1.0)
  assert [r["error"] for r in late] == ["skipped: time budget spent"] * 2
