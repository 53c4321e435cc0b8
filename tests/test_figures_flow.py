"""saelab.figures.flow on hand-built inputs: bar heights, error bars, graph layout by hand."""

import math
import subprocess
import sys

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch

from saelab import figures
from saelab.flow.groups import GROUPS, PredecessorGroups


def groups_result(layer: int, counts: list[int], null=False, agreement=None) -> PredecessorGroups:
    """A PredecessorGroups with the given group counts (one feature holds them all)."""
    counts_G = torch.tensor(counts, dtype=torch.int64)
    n_pairs = int(counts_G.sum())
    return PredecessorGroups(
        layer=layer,
        groups=GROUPS,
        null=null,
        n_tokens=100,
        n_pairs=n_pairs,
        counts_G=counts_G,
        shares_G=counts_G.double() / n_pairs,
        counts_FG=counts_G[None],
        index_FP=torch.zeros(1, 3, dtype=torch.int64),
        largest_GP=None,
        exact_agreement=agreement,
        max_split_error=None,
    )


OBSERVED = {1: [5, 3, 2, 7, 1, 0, 4, 3], 2: [10, 0, 0, 6, 2, 1, 1, 0], 3: [1, 1, 1, 1, 1, 1, 1, 3]}
NULL = {1: [1, 0, 0, 0, 0, 0, 0, 24], 2: [0, 2, 1, 0, 0, 0, 0, 17], 3: [0, 0, 0, 0, 0, 0, 0, 9]}
AGREEMENT = {1: 0.9, 2: 0.75, 3: 0.5}


def test_group_shares_bars_are_the_shares_and_the_null_beside():
    observed = [groups_result(L, c, agreement=AGREEMENT[L]) for L, c in OBSERVED.items()]
    null = [groups_result(L, c, null=True) for L, c in NULL.items()]
    fig = figures.group_shares_figure(observed, null)
    assert fig.layout.barmode == "stack"
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 2 * len(GROUPS)
    for kind, counts_of in (("observed", OBSERVED), ("shuffled null", NULL)):
        kind_bars = [b for b in bars if b.x[1][0] == kind]
        assert [b.name for b in kind_bars] == list(GROUPS)
        heights = np.array([b.y for b in kind_bars])  # [G, L]
        for i, (L, counts) in enumerate(counts_of.items()):
            assert all(b.x[0][i] == f"layer {L}" for b in kind_bars)
            by_hand = [c / sum(counts) for c in counts]  # shares from the counts, by hand
            np.testing.assert_allclose(heights[:, i], by_hand, rtol=0, atol=1e-15)
            assert math.isclose(heights[:, i].sum(), 1.0, abs_tol=1e-12)
    null_bars = [b for b in bars if b.x[1][0] != "observed"]
    assert all(b.marker.pattern.shape == "/" and not b.showlegend for b in null_bars)
    (line,) = [t for t in fig.data if t.type == "scatter"]
    assert list(line.y) == list(AGREEMENT.values()) and line.yaxis == "y2"


def test_group_shares_without_null_or_agreement():
    fig = figures.group_shares_figure([groups_result(2, OBSERVED[2])])
    assert len(fig.data) == len(GROUPS) and {t.type for t in fig.data} == {"bar"}
    assert [b.customdata[0][0] for b in fig.data] == OBSERVED[2]  # counts in hover


def test_group_shares_rejects_bad_inputs():
    one = groups_result(1, OBSERVED[1])
    with pytest.raises(ValueError, match="at least one"):
        figures.group_shares_figure([])
    with pytest.raises(ValueError, match="null layers"):
        figures.group_shares_figure([one], [groups_result(2, NULL[2], null=True)])
    with pytest.raises(ValueError, match="null=True"):
        figures.group_shares_figure([one], [groups_result(1, NULL[1])])
    with pytest.raises(ValueError, match="two predecessor-group results"):
        figures.group_shares_figure([one, one])


def test_deactivation_bars_and_case_counts():
    summary = pd.DataFrame(
        {
            "method": ["top1_cosine", "top5", "exhaustive"],
            "n_cases": [128, 128, 16],
            "ac": [0.41, 0.63, 0.88],
            "success_rate": [0.25, 0.5, 0.8125],
        }
    )
    fig = figures.deactivation_figure(summary)
    ac, success = fig.data
    assert list(ac.x) == list(summary["method"]) == list(success.x)
    assert list(ac.y) == [0.41, 0.63, 0.88] and list(success.y) == [0.25, 0.5, 0.8125]
    assert list(ac.text) == ["n=128", "n=128", "n=16"] and list(success.customdata) == [
        128,
        128,
        16,
    ]
    assert (ac.xaxis, success.xaxis) == ("x", "x2")
    with pytest.raises(ValueError, match="empty"):
        figures.deactivation_figure(summary.iloc[:0])
    with pytest.raises(ValueError, match="success_rate"):
        figures.deactivation_figure(summary.drop(columns="success_rate"))


def test_deactivation_sweep_lines_sorted_by_r():
    table = pd.DataFrame(
        {
            "r": [1.0, -1.0, 0.0, 2.0],
            "n_cases": [64] * 4,
            "ac": [0.0, 0.9, 0.7, -0.3],
            "success_rate": [0.0, 0.6, 0.4, 0.0],
            "relative_ce_change": [0.0, 0.05, 0.02, 0.01],
        }
    )
    fig = figures.deactivation_sweep_figure(table)
    assert [t.name for t in fig.data] == ["ac", "success_rate", "relative_ce_change"]
    for trace in fig.data:
        assert list(trace.x) == [-1.0, 0.0, 1.0, 2.0]
        by_r = dict(zip(table["r"], table[trace.name], strict=True))
        assert list(trace.y) == [by_r[r] for r in (-1.0, 0.0, 1.0, 2.0)]
    with pytest.raises(ValueError, match="empty"):
        figures.deactivation_sweep_figure(pd.DataFrame(columns=table.columns))


def frontier_summary() -> pd.DataFrame:
    rows = [("unsteered", 0.0, 0.0, 0.05)]
    rows += [("single-layer", s, 0.1 * s, 0.05 + 0.04 * s) for s in (8.0, 2.0, 4.0)]
    rows += [("cumulative", s, 0.2 * s, 0.05 + 0.06 * s) for s in (2.0, 4.0, 8.0)]
    rows += [("random control", s, 0.15 * s, 0.05) for s in (2.0, 4.0, 8.0)]
    table = pd.DataFrame(rows, columns=["plan", "strength", "delta_ce", "topic_score"])
    rng = np.random.default_rng(0)
    for m in ("delta_ce", "topic_score"):  # asymmetric intervals, so a swap would show
        table[f"{m}_lo"] = table[m] - rng.uniform(0.01, 0.05, len(table))
        table[f"{m}_hi"] = table[m] + rng.uniform(0.06, 0.1, len(table))
    return table


def test_steering_frontier_points_and_bootstrap_bars():
    summary = frontier_summary()
    fig = figures.steering_frontier_figure(summary)
    assert [t.name for t in fig.data] == [
        "unsteered",
        "single-layer",
        "cumulative",
        "random control",
    ]
    for trace in fig.data:
        rows = summary[summary["plan"] == trace.name].sort_values("strength")
        assert list(trace.customdata) == list(rows["strength"])  # strengths, increasing
        assert "strength" in trace.hovertemplate
        for axis, m in (("x", "delta_ce"), ("y", "topic_score")):
            assert list(getattr(trace, axis)) == list(rows[m])
            bar = getattr(trace, f"error_{axis}")
            assert bar.symmetric is False
            np.testing.assert_array_equal(bar.array, rows[f"{m}_hi"] - rows[m])
            np.testing.assert_array_equal(bar.arrayminus, rows[m] - rows[f"{m}_lo"])
    other = figures.steering_frontier_figure(summary, x="topic_score", y="delta_ce")
    assert list(other.data[1].y) == [0.2, 0.4, 0.8]
    with pytest.raises(ValueError, match="distinct_2"):
        figures.steering_frontier_figure(summary, y="distinct_2")
    with pytest.raises(ValueError, match="empty"):
        figures.steering_frontier_figure(summary.iloc[:0])


def small_graph() -> nx.DiGraph:
    """Seed resid_post.2 #7: chain 1 -> 2 -> 3 (two successors at 3), modules at 2 and 3."""
    g = nx.DiGraph(seed=("resid_post", 2, 7), res_cut=0.5, module_min=0.15)
    nodes = [("resid_post", 1, 4), ("resid_post", 2, 7), ("resid_post", 3, 1), ("resid_post", 3, 9)]
    nodes += [("mlp_out", 2, 3), ("attn_out", 2, 5), ("mlp_out", 3, 0)]
    for site, layer, feature in nodes:
        label = f"{site}.{layer} latent {feature}"
        g.add_node((site, layer, feature), site=site, layer=layer, feature=feature, label=label)
    g.nodes[("resid_post", 2, 7)]["top_tokens"] = ["<b>doctor", " nurse"]
    edges = [(0, 1, 0.9, "res"), (1, 2, 0.6, "res"), (1, 3, 0.75, "res")]
    edges += [(4, 1, 0.3, "mlp"), (5, 1, 0.2, "att"), (6, 2, 0.45, "mlp")]
    for u, v, cosine, source in edges:
        g.add_edge(nodes[u], nodes[v], cosine=cosine, source=source)
    return g


def test_flow_graph_layout_edges_and_hover():
    g = small_graph()
    fig = figures.flow_graph_figure(g)
    edges = [t for t in fig.data if t.legendgroup == "edges"]
    assert len(edges) == g.number_of_edges() == 6
    markers = {t.name: t for t in fig.data if t.legendgroup != "edges"}
    assert list(markers) == ["resid_post", "mlp_out", "attn_out"]
    lane_y = {}
    for site, trace in markers.items():
        nodes = [n for n, a in g.nodes(data=True) if a["site"] == site]
        assert list(trace.x) == [float(n[1]) for n in nodes]  # x = layer
        assert list(trace.customdata) == [n[2] for n in nodes]
        lane_y[site] = (min(trace.y), max(trace.y))
    # lanes top to bottom, not overlapping: resid above mlp above attn
    assert lane_y["resid_post"][0] > lane_y["mlp_out"][1] > lane_y["attn_out"][1]
    resid = zip(markers["resid_post"].x, markers["resid_post"].y, strict=True)
    assert len({y for x, y in resid if x == 3.0}) == 2  # two layer-3 successors, two points
    # edges run between their end nodes' positions, width growing with cosine
    pos = figures.flow_graph_positions(g)
    for trace, (u, v, a) in zip(edges, g.edges(data=True), strict=True):
        assert (trace.x[0], trace.y[0], trace.x[-1], trace.y[-1]) == (*pos[u], *pos[v])
        assert f"{a['cosine']:.3f}" in trace.hovertext
    by_cosine = sorted(zip([a["cosine"] for *_, a in g.edges(data=True)], edges, strict=True))
    widths = [t.line.width for _, t in by_cosine]
    assert all(a < b for a, b in zip(widths, widths[1:], strict=False))
    seed_at = list(g.nodes).index(("resid_post", 2, 7))
    hover = markers["resid_post"].hovertext[seed_at]
    assert "resid_post.2 latent 7" in hover and "&lt;b&gt;doctor" in hover  # tokens escaped
    assert markers["resid_post"].marker.line.width[seed_at] > 1  # the seed stands out


def test_edge_width_monotone_and_graph_errors():
    cosines = [-0.2, 0.0, 0.1, 0.5, 0.99, 1.0, 1.3]
    widths = [figures.edge_width(c) for c in cosines]
    assert widths[0] == widths[1] and widths[-1] == widths[-2]  # clipped to [0, 1]
    assert all(a < b for a, b in zip(widths[1:-1], widths[2:-1], strict=False))
    with pytest.raises(ValueError, match="no nodes"):
        figures.flow_graph_figure(nx.DiGraph())
    bad = nx.DiGraph()
    bad.add_node(("resid_pre", 1, 0), site="resid_pre", layer=1, feature=0, label="x")
    with pytest.raises(ValueError, match="resid_pre"):
        figures.flow_graph_figure(bad)


def test_import_saelab_stays_light():
    code = "import saelab, sys; print('networkx' in sys.modules, 'plotly' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
