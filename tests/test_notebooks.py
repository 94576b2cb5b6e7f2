"""Every notebook in notebooks/ runs top to bottom without an error, as a reader would run it."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize(
    "name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) or ["(no notebooks)"]
)
def test_notebook_runs(name, monkeypatch):
    if name == "(no notebooks)":
        pytest.skip(f"no notebooks in {NOTEBOOKS}")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    # The kernel then picks its own inline backend: figures render to PNG, headless.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    # Notebooks that simulate real models at full size run them smaller here (02's part 4).
    monkeypatch.setenv("LPUSIM_NOTEBOOK_SMALL", "1")
    client = NotebookClient(
        nb,
        timeout=600,  # seconds per cell
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # the kernel's working directory
    )
    client.execute()  # raises CellExecutionError, naming the cell and its traceback, on error


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_is_committed_with_its_outputs(name):
    """Committed notebooks read on a code host without running: every code cell was executed."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code and all(c.execution_count is not None for c in code), (
        f"{name}: execute it (make notebooks-run) and commit it with its outputs"
    )
