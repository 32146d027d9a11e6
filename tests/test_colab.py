"""The Colab notebook runs headless end to end (with a short run) and its cells agree with the library."""

import json
import os
import re

import matplotlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _notebook_source(path: str) -> str:
  """The notebook's code cells as one script; shell (!) and magic (%) lines only make sense in Jupyter."""
  with open(path) as f:
    cells = json.load(f)["cells"]
  lines = [line for cell in cells if cell["cell_type"] == "code" for line in "".join(cell["source"]).splitlines()]
  return "\n".join(line for line in lines if not line.strip().startswith(("!", "%")))


def test_quickstart_notebook_runs(digits_dir, tmp_path, monkeypatch):
  matplotlib.use("Agg")
  source = _notebook_source(os.path.join(REPO, "colab", "quickstart.ipynb"))
  source, count = re.subn(r"TOTAL_STEPS = \d+", "TOTAL_STEPS = 4", source)
  source = source.replace("DATA_DIR = None", f"DATA_DIR = {digits_dir!r}")
  source = source.replace('WORKDIR = "/tmp/vitjax-colab"', f"WORKDIR = {str(tmp_path)!r}")
  assert count == 1
  monkeypatch.chdir(REPO)
  namespace = {}
  exec(compile(source, "quickstart.ipynb", "exec"), namespace)  # noqa: S102 - the notebook is ours.
  assert namespace["results"]["step"] == 4 and namespace["results"]["num_examples"] == 360
  attention = namespace["attention"]
  assert attention.shape == (8, 4, 4, 4)  # Batch, heads, and the 2x2 patch grid of a gap-pooled ViT on 32x32.
  assert abs(float(attention.sum(-1).mean()) - 1.0) < 1e-5
