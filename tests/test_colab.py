"""The notebooks run headless top to bottom in a Jupyter kernel as smoke runs (their RUNLOCAL parameter), sharing one
trained run; the installer they use on Colab keeps the runtime's own accelerator packages."""

import glob
import importlib.util
import json
import os
import time

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(REPO, "colab")
PROBE = "PROBE "  # Marks the line of JSON that the appended cell prints.


def _execute(name: str, parameters: dict, probe: str) -> tuple[nbformat.NotebookNode, dict]:
  """Runs colab/`name` with `parameters` set after its "parameters" cell (as papermill injects them) in a fresh
  kernel started in colab/, as Jupyter opens it there; returns the executed notebook and the JSON of `probe`, an
  expression evaluated after the last cell."""
  notebook = nbformat.read(os.path.join(COLAB, name), as_version=4)
  index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", ()))
  injected = nbformat.v4.new_code_cell("\n".join(f"{key} = {value!r}" for key, value in parameters.items()))
  notebook.cells.insert(index + 1, injected)
  notebook.cells.append(nbformat.v4.new_code_cell(f"import json\nprint({PROBE!r} + json.dumps({probe}))"))
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}  # One device, as Colab's CPU.
  start = time.perf_counter()
  NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": COLAB}}).execute(env=env)
  print(f"{name}: {time.perf_counter() - start:.0f} s")
  printed = [output["text"] for output in notebook.cells[-1].outputs if output.get("name") == "stdout"]
  line = next(line for line in "".join(printed).splitlines() if line.startswith(PROBE))
  return notebook, json.loads(line.removeprefix(PROBE))


def _figures(notebook: nbformat.NotebookNode) -> int:
  """How many images the cells displayed."""
  outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
  return sum("image/png" in output.get("data", {}) for output in outputs)


@pytest.fixture(scope="module")
def quickstart(digits_dir, tmp_path_factory):
  """The quickstart notebook's smoke run: its workdir is the trained run the other notebooks start from."""
  workdir = str(tmp_path_factory.mktemp("quickstart"))
  parameters = {"RUNLOCAL": True, "WORKDIR": workdir, "DATA_DIR": digits_dir}
  probe = '{"results": results, "attention": list(attention.shape), "row": float(attention.sum(-1).mean())}'
  notebook, values = _execute("quickstart.ipynb", parameters, probe)
  return {"workdir": workdir, "data_dir": digits_dir, "notebook": notebook, "values": values}


def test_quickstart_notebook_trains_and_shows_attention(quickstart):
  notebook, values = quickstart["notebook"], quickstart["values"]
  assert values["results"]["step"] == 20 and values["results"]["num_examples"] == 64
  assert values["attention"] == [8, 4, 4, 4]  # Batch, heads, and the 2x2 patch grid of a gap-pooled ViT on 32x32.
  assert abs(values["row"] - 1.0) < 1e-5
  assert _figures(notebook) == 2  # The curves and the attention grid.


def test_finetune_notebook_starts_from_the_upstream_run(quickstart, tmp_path):
  workdir = str(tmp_path)
  parameters = {"RUNLOCAL": True, "UPSTREAM": quickstart["workdir"], "WORKDIR": workdir}
  parameters["DATA_DIR"] = quickstart["data_dir"]
  notebook, values = _execute("finetune.ipynb", parameters, '{"results": results, "moved": moved}')
  assert set(values["results"]) == {"finetuned", "scratch"}
  for name, results in values["results"].items():
    assert results["step"] == 20 and results["num_examples"] == 64, name
  with open(os.path.join(workdir, "finetuned", "class_names.json")) as f:
    assert json.load(f) == ["0", "1", "2", "3", "4"]  # The folder's classes: a new five-class head.
  # Twenty steps move a loaded embedding a few percent of its norm; a random start would be as far as its own norm.
  assert 0 < values["moved"]["embedding"] < 0.5 and "head" not in values["moved"]
  assert _figures(notebook) == 1


def test_explain_notebook_writes_both_reports(quickstart):
  workdir = quickstart["workdir"]
  parameters = {"RUNLOCAL": True, "WORKDIR": workdir, "DATA_DIR": quickstart["data_dir"]}
  probe = (
    '{"summary": explained["summary"], "found": len(found), "clean": robust["clean"], '
    '"attacks": list(robust["adversarial"])}'
  )
  notebook, values = _execute("explain.ipynb", parameters, probe)
  assert set(values["summary"]) == {"integrated_gradients_black", "grad_cam", "attention_rollout", "lime", "random"}
  assert values["found"] == 2 and 0 <= values["clean"] <= 1
  assert values["attacks"] == ["fgsm", "pgd_linf", "pgd_l2"]
  with open(os.path.join(workdir, "robustness.json")) as f:
    assert json.load(f)["calibration"]["split"] == "test[64:128]"
  assert _figures(notebook) == 6  # Three explain PNGs, the hand-drawn maps, the attack curves, the corruptions PNG.


def test_inspect_notebook_counts_probes_and_maps_attention(quickstart):
  parameters = {"RUNLOCAL": True, "WORKDIR": quickstart["workdir"], "DATA_DIR": quickstart["data_dir"]}
  probe = '{"counts": counts, "table": table, "probe": probe, "flow": list(flow.shape), "heads": list(heads.shape)}'
  notebook, values = _execute("inspect.ipynb", parameters, probe)
  assert values["counts"] == {"vit_ti16": 5_717_416, "vit_s16": 22_050_664, "vit_b16": 86_567_656}
  assert "Total: 629,898" in values["table"]  # vit_micro16 at 32x32 with a 10-class head.
  assert list(values["probe"]) == ["embedding", *(f"Transformer/encoderblock_{i}" for i in range(4))]
  assert all(0 <= accuracy <= 1 for accuracy in values["probe"].values())
  assert values["flow"] == [32, 32] and values["heads"] == [4, 32, 32]
  assert _figures(notebook) == 2


def test_every_notebook_is_executed_here_and_installs_only_when_vitjax_is_missing():
  tested = {"quickstart.ipynb", "finetune.ipynb", "explain.ipynb", "inspect.ipynb"}
  assert {os.path.basename(path) for path in glob.glob(os.path.join(COLAB, "*.ipynb"))} == tested
  for name in sorted(tested):
    cells = [cell for cell in nbformat.read(os.path.join(COLAB, name), as_version=4).cells if cell.cell_type == "code"]
    assert "parameters" in cells[0].metadata["tags"] and cells[0].source.startswith('REPO = "https://'), name
    assert "RUNLOCAL = False" in cells[0].source, name
    install = cells[1].source
    assert "import vitjax\nexcept ImportError:" in install and "runtime_setup.install(checkout)" in install, name


def _runtime_setup():
  spec = importlib.util.spec_from_file_location("runtime_setup", os.path.join(COLAB, "runtime_setup.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_colab_install_keeps_the_runtimes_accelerator_packages():
  setup = _runtime_setup()
  with open(os.path.join(REPO, "requirements.txt")) as f:
    requirements = f.read()
  # A Colab GPU runtime: its own jax/jaxlib/numpy/TensorFlow builds, and packages vitjax needs but it lacks.
  colab = {"jax": "0.7.2", "jaxlib": "0.7.2", "numpy": "2.0.2", "tensorflow": "2.19.0", "flax": "0.10.7"}
  to_install, kept = setup.plan(requirements, colab)
  names = {setup.normalize(line.split("==")[0]) for line in to_install}
  assert not names & {"jax", "jaxlib", "numpy", "tensorflow-cpu", "flax"}  # Kept, at the runtime's versions.
  assert {"clu", "orbax-checkpoint", "safetensors"} <= names and not names & set(setup.TEST_TOOLS)
  assert all("==" in line for line in to_install)  # What is missing comes at the tested version.
  assert "tensorflow 2.19.0 (tested: tensorflow-cpu 2.21.0)" in kept
  # Without any TensorFlow, the pinned CPU build is what there is to install.
  assert "tensorflow-cpu==2.21.0" in setup.plan(requirements, {})[0]


def test_colab_install_restarts_only_for_replaced_packages_already_loaded():
  setup = _runtime_setup()
  before = {"numpy": "2.0.2", "protobuf": "4.25.0", "pillow": "11.0.0"}
  after = {"numpy": "2.4.6", "protobuf": "5.29.0", "pillow": "11.0.0", "clu": "0.0.12"}
  assert setup.replaced_while_loaded(before, after, {"numpy", "pillow", "clu"}) == ["numpy"]
  assert setup.replaced_while_loaded(before, before, {"numpy"}) == []
  assert setup.normalize("Orbax_Checkpoint") == "orbax-checkpoint"
