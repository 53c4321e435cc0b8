"""Each dashboard of saelab.widgets used as a researcher would, in JupyterLab in Chromium: act
on its controls (found by the UI contract's classes) and check what the page shows afterwards
(the contract's data-testids, the figure's DOM). Every test ends with no console error, no
widget error and no widget left loading."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from .dashboards import FLOW_PROMPT, FLOW_STRENGTH, metrics_table, write_notebook
from .labpage import LabPage

RUN_S = 300  # the notebook: stories260K, 7 tiny SAEs, three dashboards
SCREEN = {"width": 1280, "height": 1200}  # the dashboards' screenshots show this much
VIEW_MS = 30_000  # a control change to the updated view (the kernel may be busy)


@pytest.fixture(scope="module")
def dash(lab, browser):
    write_notebook(lab.root / "dashboards.ipynb")
    page = LabPage(browser, lab, "dashboards.ipynb", viewport=SCREEN)
    try:
        page.run_all(RUN_S)
        page.assert_no_problems()
        yield page
    finally:
        page.close()


@pytest.fixture(autouse=True)
def nothing_broke(dash):
    yield
    dash.assert_no_problems()


def output_with(selector: str) -> str:
    """The notebook output holding `selector` (a whole dashboard, for screenshots)."""
    return f".jp-OutputArea-output:has({selector})"


def title_latent(dash) -> int:
    return int(re.search(r"#(\d+) of", dash.testid("fe-title").text_content()).group(1))


def expect_title(dash, latent: int) -> None:
    expect(dash.testid("fe-title")).to_contain_text(f"#{latent} of", timeout=VIEW_MS)


def option_texts(dash, css_class: str) -> list[str]:
    """A dropdown's option labels (ipywidgets shows their spaces as no-break spaces)."""
    texts = dash.control(css_class, "select").locator("option").all_text_contents()
    return [t.replace("\xa0", " ") for t in texts]


# --- FeatureExplorer -----------------------------------------------------------------------
def test_explorer_latent_box_and_steps(dash):
    start = title_latent(dash)
    dash.click("saelab-fe-next")
    expect(dash.testid("fe-title")).not_to_contain_text(f"#{start} of", timeout=VIEW_MS)
    assert title_latent(dash) > start
    dash.click("saelab-fe-prev")
    expect_title(dash, start)
    target = (start + 7) % 64
    dash.type_and_enter("saelab-fe-latent", str(target))
    expect_title(dash, target)
    assert int(dash.control("saelab-fe-latent", "input").input_value()) == target
    for testid in ("fe-top-contexts", "fe-quantiles", "fe-logits", "fe-histogram"):
        expect(dash.testid(testid)).to_be_visible()


def test_explorer_search_lists_matches_and_picking_one_shows_it(dash):
    assert len(option_texts(dash, "saelab-fe-matches")) == 1  # the placeholder
    dash.type_and_enter("saelab-fe-search", "e")
    matches = dash.control("saelab-fe-matches", "select").locator("option")
    expect(matches.first).to_contain_text(re.compile(r"\d+\slatent"), timeout=VIEW_MS)
    labels = option_texts(dash, "saelab-fe-matches")
    n_found = int(re.search(r"(\d+) latent", labels[0]).group(1))
    assert n_found > 0 and len(labels) == min(n_found, 200) + 1
    first = labels[1]  # "latent 12: 'piece', ...": its top tokens holding the query
    assert "e" in first.split(":", 1)[1].lower()
    dash.control("saelab-fe-matches", "select").select_option(index=1)
    expect_title(dash, int(re.match(r"latent (\d+)", first).group(1)))
    dash.type_and_enter("saelab-fe-search", "qqzzxq")
    expect(matches.first).to_contain_text(re.compile(r"\b0\slatent"), timeout=VIEW_MS)
    assert matches.count() == 1


def test_explorer_prompt_shows_tokens_and_ranked_latents_are_clickable(dash, screenshots):
    dash.control("saelab-fe-prompt", "textarea").fill("The doctor gave the patient medicine")
    dash.click("saelab-fe-run-prompt")
    tokens = dash.testid("fe-prompt-tokens")
    expect(tokens).to_contain_text("patient", timeout=VIEW_MS)
    expect(tokens).to_contain_text("doctor")
    link = dash.testid("fe-prompt-rank").locator("[data-latent]").first
    expect(link).to_be_visible(timeout=VIEW_MS)
    latent = int(link.get_attribute("data-latent"))
    if latent == title_latent(dash):
        link = dash.testid("fe-prompt-rank").locator("[data-latent]").nth(1)
        latent = int(link.get_attribute("data-latent"))
    link.click()
    expect_title(dash, latent)
    dash.screenshot(screenshots / "feature_explorer.png", output_with(".saelab-fe"))


# --- MetricsDashboard ----------------------------------------------------------------------
#: The Pareto figure's y-axis title and every plotted y value (the FigureWidget's element is
#: the plotly graph div itself).
FIGURE_JS = """() => {
    const box = document.querySelector('.saelab-md-figure');
    const gd = box?.matches('.js-plotly-plot') ? box : box?.querySelector('.js-plotly-plot');
    return {title: gd?.querySelector('.ytitle')?.textContent ?? '',
            y: (gd?.data ?? []).flatMap(t => Array.from(t.y ?? []))};
}"""


def shown_values(dash) -> tuple[str, list[float]]:
    figure = dash.page.evaluate(FIGURE_JS)
    return figure["title"], sorted(round(v, 6) for v in figure["y"])


def table_values(metric: str, evaluated_on: str, **only) -> list[float]:
    """The table's `metric` on `evaluated_on` rows (and `column=[values]` of `only`)."""
    t = metrics_table()
    t = t[t.evaluated_on == evaluated_on]
    for column, values in only.items():
        t = t[t[column].isin(values)]
    return sorted(round(v, 6) for v in t[metric])


def wait_for_values(dash, expected: list[float]) -> None:
    """Until the figure plots exactly `expected` (sorted; 1e-6 apart at most)."""
    dash.page.wait_for_function(
        f"""e => {{ const y = ({FIGURE_JS})().y.sort((a, b) => a - b);
            return y.length === e.length && y.every((v, i) => Math.abs(v - e[i]) < 2e-6); }}""",
        arg=expected,
        timeout=VIEW_MS,
    )


def test_metrics_dashboard_metric_and_evaluation_set_redraw_the_figure(dash, screenshots):
    metric = dash.control("saelab-md-metric", "select")
    evaluated = dash.control("saelab-md-evaluated-on", "select")
    title, values = shown_values(dash)
    start_metric, start_set = metric.input_value(), evaluated.input_value()
    assert values == table_values(start_metric, start_set)  # one seed: points are table rows
    new_metric = next(m for m in ("explained_variance", "kl", "fvu") if m != start_metric)
    dash.select("saelab-md-metric", new_metric)
    dash.page.wait_for_function(f"t => ({FIGURE_JS})().title !== t", arg=title, timeout=VIEW_MS)
    title, values = shown_values(dash)
    assert values == table_values(new_metric, start_set)
    new_set = "broad" if start_set == "medical" else "medical"
    dash.select("saelab-md-evaluated-on", new_set)
    expected = table_values(new_metric, new_set)
    wait_for_values(dash, expected)
    assert shown_values(dash) == (title, expected)
    # the multi-selects: one kind and one width left
    dash.control("saelab-md-kind", "select").select_option(label=["topk"])
    dash.control("saelab-md-widths", "select").select_option(label=["64"])
    expected = table_values(new_metric, new_set, kind=["topk"], width=[64])
    wait_for_values(dash, expected)
    assert shown_values(dash) == (title, expected)
    dash.screenshot(screenshots / "metrics_dashboard.png", output_with(".saelab-md-figure"))


# --- FlowExplorer --------------------------------------------------------------------------
def test_flow_explorer_node_dropdown_changes_the_panel(dash):
    options = option_texts(dash, "saelab-flow-node")
    assert len(options) >= 3
    panel = dash.testid("flow-feature")
    for index in (0, len(options) - 1):
        dash.control("saelab-flow-node", "select").select_option(index=index)
        node_name = options[index].split(":")[0]  # e.g. "mlp_out.3 latent 12"
        expect(panel).to_contain_text(node_name, timeout=VIEW_MS)


POINTS_JS = """() => [...document.querySelectorAll('.saelab-flow-graph .scatterlayer .point')]
    .map(p => { const b = p.getBoundingClientRect();
                return {x: b.x + b.width / 2, y: b.y + b.height / 2,
                        opacity: Number(getComputedStyle(p).opacity)}; })"""


def test_flow_explorer_clicking_a_graph_node_selects_it(dash):
    """A click on a faded marker of the figure selects that node: the dropdown and the
    panel follow, and the marker is the one highlighted."""
    dash.page.locator(".saelab-flow-graph").first.scroll_into_view_if_needed()
    node = dash.control("saelab-flow-node", "select")
    before = node.input_value()
    points = dash.page.evaluate(POINTS_JS)
    assert len(points) == len(option_texts(dash, "saelab-flow-node"))  # one marker per node
    faded = [p for p in points if p["opacity"] < 1]
    assert len(faded) == len(points) - 1  # the selected node alone is opaque
    dash.page.mouse.click(faded[0]["x"], faded[0]["y"])
    expect(node).not_to_have_value(before, timeout=VIEW_MS)
    name = node.locator("option:checked").text_content().replace("\xa0", " ").split(":")[0]
    expect(dash.testid("flow-feature")).to_contain_text(name, timeout=VIEW_MS)
    dash.page.wait_for_function(
        f"xy => ({POINTS_JS})().some(p => p.opacity === 1 && Math.abs(p.x - xy[0]) < 2"
        " && Math.abs(p.y - xy[1]) < 2)",
        arg=[faded[0]["x"], faded[0]["y"]],
        timeout=VIEW_MS,
    )


def test_flow_explorer_steers_from_a_prompt(dash, screenshots):
    steered, unsteered = dash.testid("flow-steered"), dash.testid("flow-unsteered")
    expect(steered).to_contain_text("press generate")
    dash.control("saelab-flow-prompt", "textarea").fill(FLOW_PROMPT)
    dash.click("saelab-flow-run")
    expect(steered).not_to_contain_text("press generate", timeout=VIEW_MS)
    expect(unsteered).not_to_contain_text("press generate", timeout=VIEW_MS)
    expect(dash.testid("flow-plan")).to_contain_text(f"strength {FLOW_STRENGTH:g}")
    steered_text = steered.locator("pre").text_content()
    unsteered_text = unsteered.locator("pre").text_content()
    assert steered_text.startswith(FLOW_PROMPT) and unsteered_text.startswith(FLOW_PROMPT)
    assert len(steered_text) > len(FLOW_PROMPT) and len(unsteered_text) > len(FLOW_PROMPT)
    assert steered_text != unsteered_text  # strength 20 changes the continuation
    dash.screenshot(screenshots / "flow_explorer.png", output_with(".saelab-flow-graph"))
