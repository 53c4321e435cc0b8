"""MetricsDashboard over a synthetic compare_domains table: traces, table, controls, notebook."""

import itertools

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient
from saelab.widgets import MetricsDashboard
from saelab.widgets.metrics_dashboard import METRICS, REQUIRED_COLUMNS

CORPORA = ("broad", "medical")
WIDTHS = (64, 128)
L0_TARGETS = (8, 16, 32)
SEEDS = (0, 1)


def synthetic_table(seed: int = 0) -> pd.DataFrame:
    """2 trained_on x 2 evaluated_on x 2 widths x 3 L0 targets x 2 seeds, numbers from an RNG."""
    rng = np.random.default_rng(seed)
    rows = []
    for trained, width, target, s in itertools.product(CORPORA, WIDTHS, L0_TARGETS, SEEDS):
        for evaluated in CORPORA:
            row = {
                "sae": f"topk-{trained}-w{width}-k{target}-s{s}", "trained_on": trained,
                "evaluated_on": evaluated, "kind": "topk", "width": width, "seed": s,
                "l0_target": target, "l0": target * (1 + 0.1 * rng.random()),
            }
            row.update({m: float(rng.random()) for m in METRICS})
            rows.append(row)
    return pd.DataFrame(rows, columns=list(REQUIRED_COLUMNS))


def expected_lines(table, metric, evaluated_on):
    """{(trained_on, width): seed means of metric, sorted by mean l0}, computed by hand."""
    out = {}
    for trained, width in itertools.product(CORPORA, WIDTHS):
        points = []
        for target in L0_TARGETS:
            sel = table[(table.trained_on == trained) & (table.width == width)
                        & (table.l0_target == target) & (table.evaluated_on == evaluated_on)]
            assert len(sel) == len(SEEDS)
            points.append((sel["l0"].sum() / len(sel), sel[metric].sum() / len(sel)))
        out[(trained, width)] = [y for _, y in sorted(points)]
    return out


def traces_by_line(dash):
    return {tuple(t.name.split(" · ")): t for t in dash.figure.data}


def assert_traces_match(dash, table):
    expected = expected_lines(table, dash.metric.value, dash.evaluated_on.value)
    traces = traces_by_line(dash)
    assert len(dash.figure.data) == len(CORPORA) * len(WIDTHS)
    assert set(traces) == {(t, str(w)) for t, w in expected}
    for (trained, width), ys in expected.items():
        trace = traces[(trained, str(width))]
        np.testing.assert_allclose(trace.y, ys, rtol=1e-12)
        assert trace.error_y.visible  # two seeds: standard-error bars shown


def test_traces_are_seed_means_per_line():
    table = synthetic_table()
    dash = MetricsDashboard(table)
    assert dash.widget is dash
    assert dash.metric.value == "fvu"
    assert set(dash.trained_on.value) == set(CORPORA)
    assert set(dash.widths.value) == set(WIDTHS)
    assert_traces_match(dash, table)
    assert dash.figure.layout.yaxis.title.text == "fvu"


def test_controls_update_plot_and_table():
    table = synthetic_table()
    dash = MetricsDashboard(table)
    dash.metric.value = "kl"
    dash.evaluated_on.value = "medical"
    assert_traces_match(dash, table)
    assert dash.figure.layout.yaxis.title.text == "kl"

    html = dash.table_html.value
    assert "<th>kl</th>" in html and "<th>fvu</th>" not in html
    medical = table[table.evaluated_on == "medical"]
    for v in medical["kl"]:
        assert f"<td>{v:.4g}</td>" in html
    assert html.count("<tr") == len(medical) + 1  # header row plus the selected rows
    # only evaluated_on == medical: "broad" appears once per broad-trained row (trained_on)
    n_broad_trained = (medical.trained_on == "broad").sum()
    assert html.count("<td>broad</td>") == n_broad_trained
    assert html.count("<td>medical</td>") == len(medical) + len(medical) - n_broad_trained

    dash.trained_on.value = ("medical",)
    dash.widths.value = (128,)
    assert [t.name for t in dash.figure.data] == ["medical · 128"]
    assert dash.table_html.value.count("<tr") == len(L0_TARGETS) * len(SEEDS) + 1

    dash.widths.value = ()
    assert len(dash.figure.data) == 0
    assert "no rows" in dash.table_html.value


def test_single_seed_hides_error_bars():
    table = synthetic_table()
    dash = MetricsDashboard(table[table.seed == 0])
    assert all(not t.error_y.visible for t in dash.figure.data)


def test_missing_columns_and_empty_table_raise():
    table = synthetic_table()
    with pytest.raises(ValueError, match="missing columns: kl, dead_fraction"):
        MetricsDashboard(table.drop(columns=["dead_fraction", "kl"]))
    with pytest.raises(ValueError, match="empty"):
        MetricsDashboard(table.iloc[:0])
    with pytest.raises(ValueError, match="unknown metric"):
        MetricsDashboard(table, metric="accuracy")


def test_renders_in_notebook(tmp_path):
    table_path = tmp_path / "table.csv"
    synthetic_table().to_csv(table_path, index=False)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(f"import pandas as pd\ntable = pd.read_csv({str(table_path)!r})"),
        nbformat.v4.new_code_cell("from saelab.widgets import MetricsDashboard"),
        nbformat.v4.new_code_cell("d = MetricsDashboard(table)\nd"),
        nbformat.v4.new_code_cell(
            'd.metric.value = "explained_variance"\n'
            'assert d.figure.layout.yaxis.title.text == "explained_variance"'
        ),
    ])
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
