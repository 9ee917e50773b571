"""examples/quickstart.ipynb runs top to bottom in a fresh kernel (nbclient), in seconds, on the embedded model,
and is stored without outputs (what it shows is always what the current model does, never a stale picture)."""

import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the [test] extra is not installed: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="the [test] extra is not installed: pip install -e '.[test]'")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_the_quickstart_notebook_runs_and_writes_what_it_says(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "stored with outputs"
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    outputs = ["".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream") for cell in code]
    assert "trained memory:" in outputs[0]
    assert "chunk  0 frames [0, 1, 2]" in outputs[3] and "promoted" in outputs[3]
    assert outputs[4].splitlines()[0] == "{'tau': 0.99}"  # only the given option changed
    assert (tmp_path / "quickstart.mp4").is_file() and (tmp_path / "quickstart.json").is_file()
    assert (tmp_path / "quickstart.png").stat().st_size > 20_000
    assert any("image/png" in o.get("data", {}) for o in code[-1].outputs)  # the plot, shown inline
