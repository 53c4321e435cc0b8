"""Every walkthrough notebook, at its CI size, run top to bottom in JupyterLab in Chromium
("Run All Cells"): no error output, every figure and widget rendered, no console error.

This is the notebooks' only execution in the suite (it replaced the nbclient run, which
asserted the same outputs without a front end)."""

from pathlib import Path

import pytest

from saelab.paths import REPO_ROOT

from .labpage import LabPage

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
NOTEBOOK_TIMEOUT_S = 900
PLOTLY = "application/vnd.plotly.v1+json"
WIDGET = "application/vnd.jupyter.widget-view+json"
# a drawn plotly output holds its SVG; a widget output holds the view's Lumino widget (a failed
# or loading one holds text only)
DRAWN_PLOT = ".jp-OutputArea-output.jp-RenderedPlotly:has(.main-svg)"
DRAWN_WIDGET = ".jp-OutputArea-output.lm-Panel:has(> .lm-Widget)"
# a saelab dashboard's output (not a tqdm bar), by the UI contract's classes
DASHBOARD = ", ".join(
    f".jp-OutputArea-output:has(.saelab-{name})" for name in ("fe", "md-figure", "flow-graph")
)


def saved_outputs(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_in_lab(path: Path, lab, browser, screenshots):
    page = LabPage(browser, lab, path.name)
    try:
        page.run_all(NOTEBOOK_TIMEOUT_S)
        page.screenshot(screenshots / f"{path.stem}.png")
        for i in range(page.page.locator(DASHBOARD).count()):
            page.screenshot(screenshots / f"{path.stem}_dashboard{i}.png", DASHBOARD, i)
        page.assert_no_problems()
        outputs = saved_outputs(page.saved_notebook())
        assert not [o for o in outputs if o.output_type == "error"]
        plots = [o for o in outputs if PLOTLY in o.get("data", {})]
        assert plots, f"{path.name} produced no plotly figure"
        # each figure and widget is drawn, not left as an empty box
        assert page.page.locator(DRAWN_PLOT).count() == len(plots)
        widgets = [o for o in outputs if WIDGET in o.get("data", {})]
        assert page.page.locator(DRAWN_WIDGET).count() == len(widgets)
    finally:
        page.close()
