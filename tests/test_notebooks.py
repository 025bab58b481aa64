"""Runs every notebook in ``notebooks/`` top to bottom, in its small (smoke) setting.

Each notebook runs in a fresh kernel of this interpreter (``sys.executable``, through a
kernel spec written for the test, so no other ``python3`` kernel on the machine is picked
up), with ``RECURRENT_NOTEBOOK_SMOKE=1`` and a temporary working folder, so its ``runs/``
never lands in the repository. A cell that raises fails the test.
"""

import json
import pathlib
import sys

import ipykernel  # noqa: F401  (the kernel the notebooks run in; fail here if missing)
import nbclient
import nbformat
import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def test_the_four_notebooks():
  assert [p.name for p in NOTEBOOKS] == [
    "01_quickstart.ipynb",
    "02_inside_the_gates.ipynb",
    "03_dropout_that_respects_time.ipynb",
    "04_language_model_tpu.ipynb",
  ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
  jupyter = tmp_path / "jupyter"
  spec = jupyter / "kernels" / "python3"
  spec.mkdir(parents=True)
  argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
  kernel = {"argv": argv, "display_name": "Python 3 (tests)", "language": "python"}
  (spec / "kernel.json").write_text(json.dumps(kernel))
  monkeypatch.setenv("JUPYTER_PATH", str(jupyter))  # searched before every other kernel dir
  monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # jupyter_core's own future default
  monkeypatch.setenv("RECURRENT_NOTEBOOK_SMOKE", "1")
  workdir = tmp_path / "cwd"
  workdir.mkdir()

  nb = nbformat.read(path, as_version=4)
  nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
  client = nbclient.NotebookClient(
    nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(workdir)}}
  )
  client.execute()

  assert nb.cells[-1].outputs[0]["text"].strip() == sys.executable
  assert (workdir / "runs").is_dir()  # the notebook trained, in the temporary folder
