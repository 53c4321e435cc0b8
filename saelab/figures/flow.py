"""Static figures of cross-layer feature flow and steering (docs/methods.md, "Cross-layer
feature flow"): predecessor-group shares per layer beside the shuffled-decoder null, the
deactivation methods' activation change and success, the rescaling sweep over `r`, the
steering frontier (topic against fluency, bootstrap intervals) and a flow graph drawn in
three lanes. Plain functions of the `saelab.flow` / `saelab.steer` outputs; they read those
duck-typed, so this module imports neither (nor networkx).
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# One colour per predecessor group, in `saelab.flow.GROUPS` order (singles, pairs, all, none).
GROUP_COLORS = "#4c78a8 #f58518 #54a24b #9ecae9 #88d27a #ffbf79 #b279a2 #bab0ac".split()
LANES = ("resid_post", "mlp_out", "attn_out")  # top to bottom in a flow graph
SITE_COLORS = {"resid_post": "#4c78a8", "mlp_out": "#f58518", "attn_out": "#54a24b"}
EDGE_WIDTH = (1.0, 9.0)  # line width at cosine 0 and at cosine 1
METRIC_TITLES = {
    "topic_score": "topic score (share of lexicon words)",
    "delta_ce": "Δ CE vs unsteered (nats; lower is more fluent)",
    "distinct_2": "distinct-2",
    "compression_ratio": "compression ratio",
}


def _require(table: pd.DataFrame, columns, what: str, hint: str) -> None:
    """ValueError on an empty table or one missing any of `columns`."""
    if table is None or len(table) == 0:
        raise ValueError(f"{what}: the table is empty ({hint})")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what}: the table lacks {missing} ({hint}); it has {list(table)}")


# --- predecessor groups ---------------------------------------------------------------------
def _by_layer(results, null: bool) -> dict[int, object]:
    """Layer -> PredecessorGroups, checking the `null` flag and one result per layer."""
    out = {}
    for res in results:
        if bool(res.null) != null:
            raise ValueError(f"layer {res.layer}: expected null={null}, got null={res.null}")
        if res.layer in out:
            raise ValueError(f"two predecessor-group results for layer {res.layer}")
        out[res.layer] = res
    return out


def group_shares_figure(groups_by_layer: list, null_by_layer: list | None = None) -> go.Figure:
    """The eight predecessor-group shares stacked per layer (`saelab.flow.predecessor_groups`),
    the shuffled-decoder null (`null=True`, same layers) as a hatched bar beside each, and the
    exact-split agreement per layer as markers on the right axis when it was computed."""
    if not groups_by_layer:
        raise ValueError("group_shares_figure needs at least one PredecessorGroups")
    observed = _by_layer(groups_by_layer, null=False)
    nulls = _by_layer(null_by_layer or [], null=True)
    if nulls and set(nulls) != set(observed):
        raise ValueError(f"null layers {sorted(nulls)} differ from layers {sorted(observed)}")
    groups = tuple(groups_by_layer[0].groups)
    if any(tuple(res.groups) != groups for res in [*observed.values(), *nulls.values()]):
        raise ValueError("the results disagree on the group labels")
    layers = list(observed)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for kind, results in (("observed", observed), ("shuffled null", nulls)):
        if not results:
            continue
        hatch = kind != "observed"
        x = [[f"layer {L}" for L in layers], [kind] * len(layers)]
        shares_LG = np.array([np.asarray(results[L].shares_G, dtype=np.float64) for L in layers])
        counts_LG = np.array([np.asarray(results[L].counts_G, dtype=np.int64) for L in layers])
        pairs_L = [results[L].n_pairs for L in layers]
        for g, group in enumerate(groups):
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=shares_LG[:, g],
                    name=group,
                    legendgroup=group,
                    showlegend=not hatch,
                    marker={
                        "color": GROUP_COLORS[g % 8],
                        "pattern": {"shape": "/" if hatch else ""},
                    },
                    opacity=0.55 if hatch else 1.0,
                    customdata=np.stack([counts_LG[:, g], pairs_L], axis=1),
                    hovertemplate=f"{group} ({kind})<br>%{{y:.1%}} of pairs"
                    "<br>%{customdata[0]} of %{customdata[1]}<extra></extra>",
                )
            )
    agreement = [observed[L].exact_agreement for L in layers]
    if any(a is not None for a in agreement):
        fig.add_trace(
            go.Scatter(
                x=[[f"layer {L}" for L in layers], ["observed"] * len(layers)],
                y=[np.nan if a is None else a for a in agreement],
                mode="lines+markers",
                name="exact-split agreement",
                line={"color": "black", "dash": "dot"},
                marker={"size": 10, "symbol": "diamond"},
                hovertemplate="largest part in the group: %{y:.1%}<extra></extra>",
            ),
            secondary_y=True,
        )
        fig.update_yaxes(title_text="exact-split agreement", range=[0, 1.05], secondary_y=True)
    fig.update_yaxes(title_text="share of (token, firing feature) pairs", secondary_y=False)
    title = "Predecessor groups of resid_post features (hatched: shuffled-decoder null)"
    fig.update_layout(title=title, barmode="stack", height=460)
    return fig


# --- deactivation ---------------------------------------------------------------------------
def deactivation_figure(summary: pd.DataFrame) -> go.Figure:
    """Mean activation change and success rate per predecessor-choosing method, side by side
    (`saelab.flow.summarize_deactivation`); bars are labelled with their number of cases."""
    columns = ("method", "n_cases", "ac", "success_rate")
    _require(summary, columns, "deactivation_figure", "pass summarize_deactivation(table)")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("mean activation change", "success rate"))
    for col, metric in enumerate(("ac", "success_rate"), start=1):
        fig.add_trace(
            go.Bar(
                x=summary["method"],
                y=summary[metric],
                name=metric,
                text=[f"n={n}" for n in summary["n_cases"]],
                textposition="outside",
                customdata=summary["n_cases"],
                marker={"color": "#4c78a8" if col == 1 else "#e45756"},
                hovertemplate="%{x}: %{y:.3f}<br>%{customdata} cases<extra></extra>",
            ),
            row=1,
            col=col,
        )
    fig.update_yaxes(title_text="AC = 1 - z_new / z_old", row=1, col=1)
    fig.update_yaxes(title_text="share of cases with z_new = 0", range=[0, 1.1], row=1, col=2)
    fig.update_layout(title="Deactivating a target's predecessor", showlegend=False, height=420)
    return fig


def deactivation_sweep_figure(sweep_table: pd.DataFrame) -> go.Figure:
    """Mean AC, success rate and relative CE change against the rescaling factor `r` of the
    top-1 predecessor (`saelab.flow.deactivation_sweep`); r = 1 is the clean run."""
    metrics = ("ac", "success_rate", "relative_ce_change")
    _require(sweep_table, ("r", *metrics), "deactivation_sweep_figure", "pass deactivation_sweep")
    table = sweep_table.sort_values("r")
    titles = ("mean activation change", "success rate", "relative CE change")
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles)
    n = table["n_cases"] if "n_cases" in table else [None] * len(table)
    for col, metric in enumerate(metrics, start=1):
        fig.add_trace(
            go.Scatter(
                x=table["r"],
                y=table[metric],
                mode="lines+markers",
                name=metric,
                customdata=list(n),
                hovertemplate="r=%{x}: %{y:.3f}<br>%{customdata} cases<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.add_vline(x=1.0, line_dash="dot", line_color="#888888", row=1, col=col)
        fig.update_xaxes(title_text="r (predecessor rescaled by)", row=1, col=col)
    fig.update_layout(title="Rescaling the top-1 predecessor", showlegend=False, height=380)
    return fig


# --- steering -------------------------------------------------------------------------------
def steering_frontier_figure(
    summary: pd.DataFrame, x: str = "delta_ce", y: str = "topic_score"
) -> go.Figure:
    """`y` against `x` per steering plan (`saelab.steer.summarize_sweep`): one line per plan
    through its strengths, in strength order, with the bootstrap intervals (`_lo`, `_hi`) as
    asymmetric error bars in both directions; hover shows the strength."""
    columns = ("plan", "strength", *(f"{m}{s}" for m in (x, y) for s in ("", "_lo", "_hi")))
    _require(summary, columns, "steering_frontier_figure", "pass summarize_sweep(table)")
    fig = go.Figure()
    for plan, rows in summary.groupby("plan", sort=False):
        rows = rows.sort_values("strength")

        def bars(m, rows=rows):
            minus, plus = rows[m] - rows[f"{m}_lo"], rows[f"{m}_hi"] - rows[m]
            return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus}

        baseline = plan == "unsteered"
        marker = {"size": 12, "symbol": "star", "color": "#888888"} if baseline else {"size": 8}
        fig.add_trace(
            go.Scatter(
                x=rows[x],
                y=rows[y],
                mode="markers" if baseline else "lines+markers",
                name=str(plan),
                error_x=bars(x),
                error_y=bars(y),
                customdata=rows["strength"],
                marker=marker,
                hovertemplate=f"{plan}<br>strength %{{customdata}}<br>{x} %{{x:.3f}}"
                f"<br>{y} %{{y:.3f}}<extra></extra>",
            )
        )
    fig.update_layout(
        title="Steering frontier (95% bootstrap intervals over prompts)",
        xaxis_title=METRIC_TITLES.get(x, x),
        yaxis_title=METRIC_TITLES.get(y, y),
        legend_title_text="plan",
        height=460,
    )
    return fig


# --- flow graphs ----------------------------------------------------------------------------
def flow_graph_positions(graph) -> dict[tuple, tuple[float, float]]:
    """Node -> (x, y) of `flow_graph_figure`: x is the node's layer; y its lane (resid_post 2,
    mlp_out 1, attn_out 0), nodes sharing a (lane, layer) spread by feature within ±0.35."""
    cells: dict[tuple[int, int], list] = {}
    for node, attrs in graph.nodes(data=True):
        if attrs["site"] not in LANES:
            raise ValueError(f"node {node}: site {attrs['site']!r} is not one of {LANES}")
        cells.setdefault((LANES.index(attrs["site"]), attrs["layer"]), []).append(node)
    pos = {}
    for (lane, layer), nodes in cells.items():
        nodes = sorted(nodes, key=lambda n: graph.nodes[n]["feature"])
        for k, node in enumerate(nodes):
            offset = 0.0 if len(nodes) == 1 else 0.35 - 0.7 * k / (len(nodes) - 1)
            pos[node] = (float(layer), len(LANES) - 1 - lane + offset)
    return pos


def edge_width(cosine: float) -> float:
    """Line width of an edge: linear in its cosine clipped to [0, 1]."""
    lo, hi = EDGE_WIDTH
    return lo + (hi - lo) * min(max(float(cosine), 0.0), 1.0)


def _hover(attrs: dict) -> str:
    """A node's label, and its top tokens and promoted tokens once `attach_labels` ran."""
    lines = [html.escape(attrs.get("label", ""))]
    for key, title in (("top_tokens", "top tokens"), ("promoted", "promotes")):
        if attrs.get(key):
            lines.append(f"{title}: " + " · ".join(html.escape(repr(t)) for t in attrs[key]))
    return "<br>".join(lines)


def flow_graph_figure(graph, title: str | None = None) -> go.Figure:
    """A `saelab.flow.flow_graph` drawn left to right by layer in three lanes (resid_post,
    mlp_out, attn_out): one line per edge, its width growing with the decoder cosine (module
    edges inside a layer bend right so they clear the lane between), markers per site with
    the label and top tokens in hover; the seed gets a black outline."""
    if graph.number_of_nodes() == 0:
        raise ValueError("the flow graph has no nodes")
    pos = flow_graph_positions(graph)
    fig = go.Figure()
    for u, v, attrs in graph.edges(data=True):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        bend = 0.15 * abs(y1 - y0) if x0 == x1 else 0.0
        cosine = attrs.get("cosine", float("nan"))
        fig.add_trace(
            go.Scatter(
                x=[x0, (x0 + x1) / 2 + bend, x1],
                y=[y0, (y0 + y1) / 2, y1],
                mode="lines",
                line={"width": edge_width(cosine), "color": "#999999", "shape": "spline"},
                opacity=0.7,
                legendgroup="edges",
                showlegend=False,
                hoverinfo="text",
                hovertext=f"{attrs.get('source', '')} edge, cosine {cosine:.3f}",
            )
        )
    seed = tuple(graph.graph.get("seed", ()))
    for site in LANES:
        nodes = [n for n, a in graph.nodes(data=True) if a["site"] == site]
        if not nodes:
            continue
        outline = {"width": [3 if n == seed else 1 for n in nodes], "color": "black"}
        fig.add_trace(
            go.Scatter(
                x=[pos[n][0] for n in nodes],
                y=[pos[n][1] for n in nodes],
                mode="markers",
                name=site,
                marker={"size": 16, "color": SITE_COLORS[site], "line": outline},
                customdata=[graph.nodes[n]["feature"] for n in nodes],
                hovertext=[_hover(graph.nodes[n]) for n in nodes],
                hoverinfo="text",
            )
        )
    layers = sorted({a["layer"] for _, a in graph.nodes(data=True)})
    fig.update_xaxes(title_text="layer", tickvals=layers, showgrid=False, zeroline=False)
    fig.update_yaxes(
        tickvals=[2, 1, 0], ticktext=list(LANES), range=[-0.6, 2.6], showgrid=False, zeroline=False
    )
    start = graph.nodes[seed]["label"] if seed in graph else "its seed"
    fig.update_layout(title=title or f"Feature flow from {start}", height=460, plot_bgcolor="white")
    return fig
