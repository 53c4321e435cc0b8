"""Every walkthrough notebook, at its CI size, run top to bottom in JupyterLab in Chromium
("Run All Cells"): no error output, every figure and widget rendered, no console error.

This is the notebooks' only execution in the suite (it replaced the nbclient run, which
asserted the same outputs without a front end)."""

from pathlib import Path

import pytest
from playwright.sync_api import expect

from saelab.paths import REPO_ROOT

from .labpage import LabPage

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
NOTEBOOK_TIMEOUT_S = 900
VIEW_MS = 120_000  # a control change to the updated view (SmolLM2 generates on CPU)
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


def use_dashboards(page: LabPage) -> int:
    """A first use of each saelab dashboard the notebook shows (SmolLM2 at CI size), checked
    on the page; returns how many were used."""
    used = 0
    if page.page.locator(".saelab-fe").count():
        title = page.testid("fe-title")
        before = title.text_content()
        page.click("saelab-fe-next")
        expect(title).not_to_have_text(before, timeout=VIEW_MS)
        used += 1
    if page.page.locator(".saelab-md-figure").count():
        y_title = page.page.locator(".saelab-md-figure .ytitle").first
        before = y_title.text_content()
        metric = page.control("saelab-md-metric", "select")
        current = metric.input_value()
        metric.select_option(
            next(v for v in metric.locator("option").all_text_contents() if v != current)
        )
        expect(y_title).not_to_have_text(before, timeout=VIEW_MS)
        used += 1
    if page.page.locator(".saelab-flow-graph").count():
        page.click("saelab-flow-run")
        for testid in ("flow-unsteered", "flow-steered"):
            expect(page.testid(testid)).not_to_contain_text("press generate", timeout=VIEW_MS)
        used += 1
    return used


def saved_outputs(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_in_lab(path: Path, lab, browser, screenshots):
    page = LabPage(browser, lab, path.name)
    try:
        page.run_all(NOTEBOOK_TIMEOUT_S)
        assert use_dashboards(page) == page.page.locator(DASHBOARD).count()  # all of them
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
