"""The notebooks run from top to bottom, and each committed ``.ipynb`` is its ``.py``.

The notebooks are jupytext percent scripts (``notebooks/*.py``, the source to edit) paired
with ``.ipynb`` files that carry their outputs (for reading and for the docs). Each test
executes one script as a notebook, through a Jupyter kernel (nbclient), and checks that the
committed ``.ipynb`` has the script's cells. ``JAXREG_WRITE_NOTEBOOKS=1`` writes the executed
notebooks instead (``JAXREG_WRITE_NOTEBOOKS=1 python -m pytest -m notebooks
tests/test_notebooks.py``). Marked ``notebooks``: `.ci/run` runs them after the main suite.
"""

import os
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

FOLDER = Path(__file__).resolve().parents[1] / "notebooks"
SCRIPTS = sorted(p for p in FOLDER.glob("*.py") if not p.name.startswith("_"))
NAMES = [p.stem for p in SCRIPTS]


def _code(notebook) -> list[str]:
    return [cell.source.strip() for cell in notebook.cells if cell.cell_type == "code"]


def test_the_planned_notebooks_are_there():
    assert {"quickstart", "multiobjective", "diagnostics", "fairness"} <= set(NAMES)


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_and_matches_its_script(name, monkeypatch):
    script = FOLDER / f"{name}.py"
    notebook = jupytext.read(script)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(FOLDER.parent), os.environ.get("PYTHONPATH", "")]))
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(FOLDER)}}).execute()
    errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors
    paired = FOLDER / f"{name}.ipynb"
    if os.environ.get("JAXREG_WRITE_NOTEBOOKS"):
        jupytext.write(notebook, paired)
    assert paired.exists(), f"write it: JAXREG_WRITE_NOTEBOOKS=1 pytest -m notebooks -k {name}"
    assert _code(jupytext.read(paired)) == _code(jupytext.read(script)), (
        f"{paired.name} is out of date with {script.name}; rewrite it with "
        "JAXREG_WRITE_NOTEBOOKS=1")
    figures = sum("image/png" in output.get("data", {}) for cell in notebook.cells
                  for output in cell.get("outputs", []))
    assert figures >= 1  # every notebook draws its result
