"""saelab.figures on small fake tables: traces, seed means and std bars by hand, the report."""

import itertools
import math

import numpy as np
import pandas as pd
import plotly.offline
import pytest
import torch

from saelab import figures
from saelab.metrics import SUMMARY_METRICS

CORPORA, KINDS, WIDTHS, TARGETS, SEEDS = (
    ("medical", "broad"),
    ("jumprelu", "topk"),
    (64, 128),
    (8, 16, 32),
    (0, 1, 2),
)


def domain_table(seeds=SEEDS) -> pd.DataFrame:
    """A compare_domains-shaped table with RNG metrics (every setting x seed x evaluation set)."""
    rng = np.random.default_rng(0)
    rows = []
    # targets in decreasing order, so that a line must sort its points by L0
    for trained, kind, width, target, seed in itertools.product(
        CORPORA, KINDS, WIDTHS, TARGETS[::-1], seeds
    ):
        for evaluated in CORPORA:
            row = {
                "sae": f"{trained}-{kind}-w{width}-l0_{target}-s{seed}",
                "trained_on": trained,
                "evaluated_on": evaluated,
                "kind": kind,
                "width": width,
                "seed": seed,
                "target_l0": target,
            }
            row.update({m: float(rng.random()) for m in SUMMARY_METRICS})
            row["l0"] = target * (1 + rng.random())
            rows.append(row)
    return pd.DataFrame(rows)


def sparsity_table() -> pd.DataFrame:
    """A compare_kron-shaped table: one row per SAE, no seed or evaluation-set column."""
    rng = np.random.default_rng(1)
    # encoder cost: TopK F*d, KronSAE 1/4 then 1/8 of it (decreasing: the line must sort)
    rows = [
        {
            "sae": f"{kind}-w{width}-{i}",
            "kind": kind,
            "width": width,
            "k": 16,
            "encoder_multiply_adds": width * 576 // (1, 4, 8)[i],
            "l0": 16 - rng.random(),
            "fvu": float(rng.random()),
            "explained_variance": float(rng.random()),
        }
        for width in (512, 2048)
        for i, kind in enumerate(("topk", "kron", "kron"))
    ]
    return pd.DataFrame(rows)


def by_hand(table, trained, kind, width, evaluated, metric):
    """Per target: (mean l0, mean metric, std l0, std metric) over seeds in float64 by
    explicit sums, sorted by mean l0; std is sample std (n - 1), 0 for one seed."""
    points = []
    for target in TARGETS:
        sel = table[
            (table.trained_on == trained)
            & (table.kind == kind)
            & (table.width == width)
            & (table.evaluated_on == evaluated)
            & (table.target_l0 == target)
        ]
        stats = []
        for column in ("l0", metric):
            values = [float(v) for v in sel[column]]
            mean = sum(values) / len(values)
            ss = sum((v - mean) ** 2 for v in values)
            stats.append((mean, math.sqrt(ss / (len(values) - 1)) if len(values) > 1 else 0.0))
        points.append((stats[0][0], stats[1][0], stats[0][1], stats[1][1]))
    return [list(column) for column in zip(*sorted(points), strict=True)]


def test_one_trace_per_line_and_panel():
    table = domain_table()
    names = {f"{t} · {k} · w{w}" for t, k, w in itertools.product(CORPORA, KINDS, WIDTHS)}
    one = figures.pareto_figure(table, evaluated_on="medical")
    assert [t.name for t in one.data] == [
        f"{t} · {k} · w{w}" for t, k, w in itertools.product(CORPORA, KINDS, WIDTHS)
    ]
    both = figures.pareto_figure(table, metric="explained_variance")
    assert len(both.data) == 2 * len(names)
    assert [t.xaxis for t in both.data] == ["x"] * len(names) + ["x2"] * len(names)
    assert {t.name for t in both.data if t.showlegend} == names
    kron = figures.pareto_figure(sparsity_table(), x="encoder_multiply_adds")
    assert [t.name for t in kron.data] == [
        "topk · w512",
        "kron · w512",
        "topk · w2048",
        "kron · w2048",
    ]


@pytest.mark.parametrize("metric", ["kl", "linear_error_fvu"])
def test_points_are_seed_means_with_std_error_bars(metric):
    table = domain_table()
    fig = figures.pareto_figure(table, metric=metric, evaluated_on="broad")
    for trace in fig.data:
        trained, kind, width = trace.name.split(" · ")
        x, y, x_std, y_std = by_hand(table, trained, kind, int(width[1:]), "broad", metric)
        np.testing.assert_allclose(trace.x, x, rtol=1e-12)
        np.testing.assert_allclose(trace.y, y, rtol=1e-12)
        np.testing.assert_allclose(trace.error_x.array, x_std, rtol=1e-12)
        np.testing.assert_allclose(trace.error_y.array, y_std, rtol=1e-12)
        assert min(y_std) > 0
    ce = figures.ce_figure(table, evaluated_on="medical").data[0]
    assert ce.name == "medical · jumprelu · w64"
    np.testing.assert_allclose(
        ce.y,
        by_hand(table, "medical", "jumprelu", 64, "medical", "ce_loss_recovered")[1],
        rtol=1e-12,
    )


def test_one_seed_points_are_the_rows():
    table = domain_table(seeds=(0,))
    trace = figures.pareto_figure(table, metric="fvu", evaluated_on="medical").data[-1]
    rows = table[
        (table.trained_on == "broad")
        & (table.kind == "topk")
        & (table.width == 128)
        & (table.evaluated_on == "medical")
    ].sort_values("l0")
    assert trace.name == "broad · topk · w128"
    assert list(trace.x) == rows["l0"].tolist() and list(trace.y) == rows["fvu"].tolist()
    assert list(trace.error_y.array) == [0.0] * len(TARGETS)


def test_sparsity_traces_are_the_table_values():
    table = sparsity_table()
    fig = figures.pareto_figure(table, metric="explained_variance", x="encoder_multiply_adds")
    kron = table[(table.kind == "kron") & (table.width == 2048)]
    kron = kron.sort_values("encoder_multiply_adds")
    trace = next(t for t in fig.data if t.name == "kron · w2048")
    assert list(trace.x) == kron["encoder_multiply_adds"].tolist()
    assert list(trace.y) == kron["explained_variance"].tolist()
    assert list(trace.text) == kron["sae"].tolist()
    assert trace.error_y.array is None  # one SAE per point: nothing to average


def test_error_bars_figure_stacks_seed_means():
    table = domain_table()
    fig = figures.error_bars_figure(table, evaluated_on="medical")
    assert [t.name for t in fig.data] == ["linear error", "nonlinear error"]
    linear = fig.data[0]
    assert len(linear.x) == len(CORPORA) * len(KINDS) * len(WIDTHS) * len(TARGETS)
    i = list(linear.x).index("broad-topk-w128-l0_16")
    sel = table[
        table.sae.str.startswith("broad-topk-w128-l0_16-") & (table.evaluated_on == "medical")
    ]
    values = sel["linear_error_fvu"].tolist()
    mean = sum(values) / len(values)
    assert linear.y[i] == pytest.approx(mean, rel=1e-12)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    assert linear.error_y.array[i] == pytest.approx(std, rel=1e-12)


def test_unknown_evaluated_on_or_metric_raises():
    table = domain_table()
    with pytest.raises(ValueError, match="no rows evaluated on 'legal'"):
        figures.pareto_figure(table, evaluated_on="legal")
    with pytest.raises(ValueError, match="no 'accuracy' column"):
        figures.pareto_figure(table, metric="accuracy")
    with pytest.raises(ValueError, match="'target_l0' is not averaged over seeds"):
        figures.pareto_figure(table, x="target_l0")
    with pytest.raises(ValueError, match="no evaluated_on column"):
        figures.pareto_figure(sparsity_table(), evaluated_on="medical")
    with pytest.raises(ValueError, match="no rows evaluated on 'legal'"):
        figures.error_bars_figure(table, evaluated_on="legal")


def test_write_report_is_one_self_contained_file(tmp_path):
    table = domain_table()
    figs = [
        figures.pareto_figure(table),
        figures.ce_figure(table),
        figures.metrics_table({"fvu": 0.25, "model": "stories"}),
    ]
    path = figures.write_report(tmp_path / "report.html", "A <b> report", figs, notes="n & m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temp file left
    page = path.read_text()
    bundle = plotly.offline.get_plotlyjs()
    assert page.count(bundle[:200]) == 1 and bundle[-200:] in page  # the whole bundle, once
    assert "<script src=" not in page  # nothing fetched from a CDN
    assert page.count('class="plotly-graph-div"') == len(figs)
    assert "<title>A &lt;b&gt; report</title>" in page and "n &amp; m" in page


def test_one_sae_figures():
    history = [
        {"tokens": 512 * i, "fvu": 1 / i, "l0": 10.0 + i, "dead_fraction": 0.5 / i}
        for i in range(1, 5)
    ]
    curves = figures.training_curves(history)
    assert [list(t.y) for t in curves.data] == [
        [h[k] for h in history] for k in ("fvu", "l0", "dead_fraction")
    ]
    assert curves.layout.yaxis3.range == (0, 0.55)  # from 0 to 1.1 x the largest (0.5)
    no_dead = figures.training_curves([{**h, "dead_fraction": 0.0} for h in history])
    assert no_dead.layout.yaxis3.range == (0, 0.01)  # not plotly's [-1, 1] for all zeros
    all_dead = figures.training_curves([{**h, "dead_fraction": 1.0} for h in history])
    assert all_dead.layout.yaxis3.range == (0, 1.0)
    l0 = figures.l0_histogram(torch.tensor([3, 4, 5, 6]))
    assert l0.layout.title.text == "L0 per token (mean 4.5)"
    density_F = torch.tensor([0.0, 0.1, 0.0, 0.01, 0.001], dtype=torch.float64)
    dens = figures.density_histogram(density_F)
    assert dens.layout.title.text == "Feature density (2 of 5 latents never fire)"
    np.testing.assert_allclose(dens.data[0].x, [-1.0, -2.0, -3.0], rtol=1e-12)


def test_residual_figures():
    rows = []
    for corpus, gains in (("medical", (0.90, 0.95, 0.97)), ("broad", (0.96, 0.97, 0.94))):
        for (sae, role, width), ce in zip(
            (
                ("base", "base", 0),
                ("base+r-w32", "base+residual", 32),
                ("only-w96", "domain-only", 32),
            ),
            gains,
            strict=True,
        ):
            rows.append(
                {
                    "sae": sae,
                    "role": role,
                    "residual_width": width,
                    "evaluated_on": corpus,
                    "ce_loss_recovered": ce,
                    "ce_loss_recovered_vs_base": ce / gains[0],
                }
            )
    fig = figures.retention_figure(pd.DataFrame(rows))
    traces = {t.name: t for t in fig.data}
    assert list(traces["base+residual"].x) == pytest.approx([100 * 0.97 / 0.96])
    assert list(traces["base+residual"].y) == pytest.approx([0.95 - 0.90])
    assert list(traces["domain-only"].y) == pytest.approx([0.97 - 0.90])
    with pytest.raises(ValueError, match="'legal'"):
        figures.retention_figure(pd.DataFrame(rows), broad="legal")

    class Redundancy:
        block_F, reference_F = torch.tensor([0.9, 0.2]), torch.tensor([0.1, 0.3, 0.5])

    red = figures.redundancy_figure(Redundancy(), block="medical residual")
    assert [list(t.x) for t in red.data] == [
        pytest.approx([0.1, 0.3, 0.5]),
        pytest.approx([0.9, 0.2]),
    ]
    assert red.data[1].name == "medical residual row vs base rows"
