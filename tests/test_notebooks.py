"""Every notebook in analysis/ executes without error, in small mode, on data it generates
itself (convention: analysis/README.md): CTPC_SMALL=1, CTPC_RUNS=<empty temp dir>."""
import glob
import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(glob.glob(str(ROOT / "analysis" / "*.ipynb")))


def test_notebooks_exist():
    assert any(Path(n).name == "propagation.ipynb" for n in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: Path(p).stem)
def test_notebook_has_no_stored_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{Path(path).name}: clear the outputs of cells {dirty} before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: Path(p).stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # The kernel inherits this environment: small mode, a fresh data directory (so the
    # notebook's own data generation runs too), this checkout's ctpc first on the path, and
    # a non-interactive matplotlib.
    env = {"CTPC_SMALL": "1", "CTPC_RUNS": str(tmp_path / "runs"), "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = NotebookClient(nb, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(Path(path).parent)}})
    client.execute()          # raises CellExecutionError naming the failing cell
