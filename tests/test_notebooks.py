"""Every walkthrough notebook runs top to bottom (small configuration) under nbclient."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def code_outputs(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("SAELAB_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for o in code_outputs(nb) if o.output_type == "error"]
    assert not errors
    # the figures are really there: plotly bundles in the outputs
    plots = [o for o in code_outputs(nb) if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert plots, f"{path.name} produced no plotly figure"
