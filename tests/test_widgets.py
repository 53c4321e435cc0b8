"""MetricsDashboard over a synthetic compare_domains table: traces, table, controls, notebook."""

import itertools

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

from saelab.metrics import SUMMARY_METRICS
from saelab.widgets import MetricsDashboard
from saelab.widgets.metrics_dashboard import REQUIRED_COLUMNS

CORPORA = ("broad", "medical")
WIDTHS = (64, 128)
TARGET_L0S = (8, 16, 32)
SEEDS = (0, 1)


def synthetic_table(seed: int = 0) -> pd.DataFrame:
    """2 trained_on x 2 evaluated_on x 2 widths x 3 target L0s x 2 seeds, numbers from an RNG."""
    rng = np.random.default_rng(seed)
    rows = []
    for trained, width, target, s in itertools.product(CORPORA, WIDTHS, TARGET_L0S, SEEDS):
        for evaluated in CORPORA:
            row = {
                "sae": f"{trained}-topk-w{width}-l0_{target}-s{s}",
                "trained_on": trained,
                "evaluated_on": evaluated,
                "kind": "topk",
                "width": width,
                "seed": s,
                "target_l0": target,
            }
            row.update({m: float(rng.random()) for m in SUMMARY_METRICS})
            row["l0"] = target * (1 + 0.1 * rng.random())
            rows.append(row)
    return pd.DataFrame(rows, columns=list(REQUIRED_COLUMNS))


def expected_lines(table, metric, evaluated_on):
    """{(trained_on, width): (seed means of metric, seed stds), sorted by mean l0}, by hand."""
    out = {}
    for trained, width in itertools.product(CORPORA, WIDTHS):
        points = []
        for target in TARGET_L0S:
            sel = table[
                (table.trained_on == trained)
                & (table.width == width)
                & (table.target_l0 == target)
                & (table.evaluated_on == evaluated_on)
            ]
            assert len(sel) == len(SEEDS)
            values = sel[metric].tolist()
            mean = sum(values) / len(values)
            std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
            points.append((sel["l0"].sum() / len(sel), mean, std))
        points.sort()
        out[(trained, width)] = ([p[1] for p in points], [p[2] for p in points])
    return out


def traces_by_line(dash):
    """{(trained_on, width): trace} from names like `medical · topk · w128`."""
    lines = {}
    for trace in dash.figure.data:
        trained, kind, width = trace.name.split(" · ")
        assert kind == "topk"
        lines[(trained, int(width.removeprefix("w")))] = trace
    return lines


def assert_traces_match(dash, table):
    expected = expected_lines(table, dash.metric.value, dash.evaluated_on.value)
    traces = traces_by_line(dash)
    assert len(dash.figure.data) == len(CORPORA) * len(WIDTHS)
    assert set(traces) == set(expected)
    for line, (means, stds) in expected.items():
        np.testing.assert_allclose(traces[line].y, means, rtol=1e-12)
        np.testing.assert_allclose(traces[line].error_y.array, stds, rtol=1e-12)  # std, not sem


def test_traces_are_seed_means_with_std_bars():
    table = synthetic_table()
    dash = MetricsDashboard(table)
    assert dash.metric.value == "fvu"
    assert "l0" not in dash.metric.options  # the x axis
    assert set(dash.trained_on.value) == set(CORPORA)
    assert set(dash.widths.value) == set(WIDTHS)
    assert_traces_match(dash, table)
    assert dash.figure.layout.yaxis.title.text == "fvu"


def test_metric_dropdown_redraws_seed_means_of_that_metric():
    table = synthetic_table()
    dash = MetricsDashboard(table)
    evaluated = dash.evaluated_on.value
    # independent summary: pandas groupby over seeds
    means = (
        table[table.evaluated_on == evaluated]
        .groupby(["trained_on", "width", "target_l0"])[["l0", "kl", "fvu"]]
        .mean()
    )
    for metric in ("kl", "fvu"):
        dash.metric.value = metric
        for (trained, width), trace in traces_by_line(dash).items():
            line = means.loc[(trained, width)].sort_values("l0")
            np.testing.assert_allclose(trace.x, line["l0"], rtol=1e-12)
            np.testing.assert_allclose(trace.y, line[metric], rtol=1e-12)
        assert dash.figure.layout.yaxis.title.text == metric


def test_controls_update_plot_and_table():
    table = synthetic_table()
    dash = MetricsDashboard(table)
    dash.metric.value = "kl"
    dash.evaluated_on.value = "medical"
    assert_traces_match(dash, table)
    assert dash.figure.layout.yaxis.title.text == "kl"

    html = dash.table_html.value
    assert "<th>kl</th>" in html and "<th>fvu</th>" not in html and "<th>target_l0</th>" in html
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
    assert [t.name for t in dash.figure.data] == ["medical · topk · w128"]
    assert dash.table_html.value.count("<tr") == len(TARGET_L0S) * len(SEEDS) + 1

    dash.widths.value = ()
    assert len(dash.figure.data) == 0
    assert "no rows" in dash.table_html.value


def test_single_seed_has_zero_error_bars():
    table = synthetic_table()
    one = table[table.seed == 0]
    dash = MetricsDashboard(one)
    for (trained, width), trace in traces_by_line(dash).items():
        rows = one[
            (one.trained_on == trained)
            & (one.width == width)
            & (one.evaluated_on == dash.evaluated_on.value)
        ].sort_values("l0")
        assert list(trace.y) == rows["fvu"].tolist()
        assert list(trace.error_y.array) == [0.0] * len(TARGET_L0S)


def test_missing_columns_and_empty_table_raise():
    table = synthetic_table()
    with pytest.raises(ValueError, match="missing columns: kl, dead_fraction"):
        MetricsDashboard(table.drop(columns=["dead_fraction", "kl"]))
    with pytest.raises(ValueError, match="missing columns: target_l0"):
        MetricsDashboard(table.rename(columns={"target_l0": "l0_target"}))
    with pytest.raises(ValueError, match="empty"):
        MetricsDashboard(table.iloc[:0])
    with pytest.raises(ValueError, match="unknown metric"):
        MetricsDashboard(table, metric="accuracy")


def test_renders_in_notebook(tmp_path):
    table_path = tmp_path / "table.csv"
    synthetic_table().to_csv(table_path, index=False)
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                f"import pandas as pd\ntable = pd.read_csv({str(table_path)!r})"
            ),
            nbformat.v4.new_code_cell("from saelab.widgets import MetricsDashboard"),
            nbformat.v4.new_code_cell("d = MetricsDashboard(table)\nd"),
            nbformat.v4.new_code_cell(
                'd.metric.value = "explained_variance"\n'
                'assert d.figure.layout.yaxis.title.text == "explained_variance"'
            ),
        ]
    )
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
