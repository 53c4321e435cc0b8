"""MetricsDashboard over a synthetic compare_domains table (traces, table, controls, notebook),
two kinds kept apart, and the table `saelab.evaluate` returns."""

import itertools

import nbformat
import numpy as np
import pandas as pd
import pytest
from conftest import HOOK
from nbclient import NotebookClient

import saelab
from saelab.metrics import SUMMARY_METRICS
from saelab.widgets import MetricsDashboard

CORPORA = ("broad", "medical")
WIDTHS = (64, 128)
TARGET_L0S = (8, 16, 32)
SEEDS = (0, 1)
COLUMNS = [
    "sae",
    "kind",
    "trained_on",
    "evaluated_on",
    "width",
    "seed",
    "target_l0",
    *SUMMARY_METRICS,
]


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
    return pd.DataFrame(rows, columns=COLUMNS)


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


def test_missing_metrics_leave_the_dropdown_and_bad_tables_raise():
    table = synthetic_table()
    dash = MetricsDashboard(table.drop(columns=["dead_fraction", "kl"]))
    assert "kl" not in dash.metric.options and "dead_fraction" not in dash.metric.options
    with pytest.raises(ValueError, match="unknown metric 'kl'"):
        MetricsDashboard(table.drop(columns=["kl"]), metric="kl")
    with pytest.raises(ValueError, match="needs an 'l0' column and at least one metric"):
        MetricsDashboard(table[["sae", "kind", "l0"]])
    with pytest.raises(ValueError, match="with seeds needs a 'target_l0'"):
        MetricsDashboard(table.rename(columns={"target_l0": "l0_target"}))
    with pytest.raises(ValueError, match="empty"):
        MetricsDashboard(table.iloc[:0])
    with pytest.raises(ValueError, match="unknown metric"):
        MetricsDashboard(table, metric="accuracy")
    with pytest.raises(ValueError, match="no rows evaluated on 'code'"):
        MetricsDashboard(table, evaluated_on="code")


def test_opens_on_the_domain_set_with_classes_and_whole_labels():
    dash = MetricsDashboard(synthetic_table())
    assert dash.evaluated_on.value == "medical"  # not "broad", which sorts first
    assert MetricsDashboard(synthetic_table(), evaluated_on="broad").evaluated_on.value == "broad"
    classes = {
        "saelab-md-metric": dash.metric,
        "saelab-md-evaluated-on": dash.evaluated_on,
        "saelab-md-trained-on": dash.trained_on,
        "saelab-md-kind": dash.kinds,
        "saelab-md-widths": dash.widths,
        "saelab-md-figure": dash.figure,
    }
    for css, widget in classes.items():
        assert css in widget._dom_classes
    assert dash.evaluated_on.style.description_width == "initial"  # "evaluated on" not cut


def two_kinds_table() -> pd.DataFrame:
    """TopK at FVU ~0.8 and JumpReLU at ~0.2, same corpus, width, target L0s and seeds."""
    rows = []
    for kind, fvu in (("topk", 0.8), ("jumprelu", 0.2)):
        for target, s in itertools.product(TARGET_L0S, SEEDS):
            row = {"sae": f"medical-{kind}-w64-l0_{target}-s{s}", "kind": kind}
            row.update(trained_on="medical", evaluated_on="medical", width=64, seed=s)
            row.update({m: 0.5 for m in SUMMARY_METRICS})
            row.update(target_l0=target, l0=float(target), fvu=fvu + 0.01 * s + 0.001 * target)
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def test_two_kinds_stay_two_lines_and_the_kind_selector_filters():
    dash = MetricsDashboard(two_kinds_table())
    assert set(dash.kinds.options) == {"topk", "jumprelu"}
    lines = {t.name: t for t in dash.figure.data}
    assert set(lines) == {"medical · topk · w64", "medical · jumprelu · w64"}
    for kind, fvu in (("topk", 0.8), ("jumprelu", 0.2)):
        trace = lines[f"medical · {kind} · w64"]
        # seed mean of fvu + 0.01 * seed over seeds 0 and 1, at each target (= L0)
        np.testing.assert_allclose(trace.y, [fvu + 0.005 + 0.001 * t for t in TARGET_L0S])
        assert list(trace.customdata) == [2, 2, 2]  # seeds of this kind only
        assert "seeds %{customdata}" in trace.hovertemplate
    dash.kinds.value = ("jumprelu",)
    assert [t.name for t in dash.figure.data] == ["medical · jumprelu · w64"]
    assert dash.figure.layout.showlegend is True  # one line left keeps its legend
    assert dash.table_html.value.count("<td>jumprelu</td>") == len(TARGET_L0S) * len(SEEDS)
    assert "<td>topk</td>" not in dash.table_html.value


def test_renders_the_table_evaluate_returns(stories, medical_tokens):
    d = stories._module.config.hidden_size
    topk = saelab.make_sae("topk", d, 256, seed=0, k=8)
    jump = saelab.make_sae("jumprelu", d, 128, seed=1)
    table = saelab.evaluate([topk, jump], stories, HOOK, medical_tokens, progress=False)
    assert "kind" not in table.columns and "trained_on" not in table.columns
    dash = MetricsDashboard(table)
    lines = {t.name: t for t in dash.figure.data}
    assert set(lines) == {"unknown · topk · w256", "unknown · jumprelu · w128"}
    for name, trace in zip(
        ("topk-256", "jumprelu-128"),
        (lines["unknown · topk · w256"], lines["unknown · jumprelu · w128"]),
        strict=True,
    ):
        row = table.set_index("sae").loc[name]
        assert list(trace.y) == [row["fvu"]] and list(trace.x) == [row["l0"]]
    assert dash.evaluated_on.value == "unknown"

    named = {"mine": topk}
    renamed = saelab.evaluate(named, stories, HOOK, medical_tokens, ce=False, progress=False)
    with pytest.raises(ValueError, match="width of SAE 'mine'.*saes="):
        MetricsDashboard(renamed)
    dash = MetricsDashboard(renamed, saes=named)
    assert [t.name for t in dash.figure.data] == ["unknown · topk · w256"]
    assert dash.figure.layout.showlegend is True
    assert "ce_loss_recovered" not in dash.metric.options  # ce=False: no CE columns


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
