"""Figures comparing SAEs: a metric against L0 or encoder cost, the error split, retention.

Plain functions of the experiment tables (`compare_domains`, the Pareto sweeps, the residual
runs): one line per (trained_on, kind, width), one panel per evaluation set, the linear and
nonlinear error parts, and a residual SAE's domain gain against its general retention. Seed
averages come from `saelab.experiments.common.summarize`, the one seed summary (mean and
sample std).
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from saelab.experiments.common import summarize
from saelab.experiments.domains import DOMAIN_GROUP, group_name

LINES = ("trained_on", "kind", "width")  # one line per combination of those the table has
LOWER_IS_BETTER = (
    "fvu",
    "mse",
    "delta_ce",
    "kl",
    "dead_fraction",
    "linear_error_fvu",
    "nonlinear_error_fvu",
)
CORPUS_COLORS = ["#e45756", "#4c78a8", "#54a24b", "#f58518"]  # by training corpus, domain first
KIND_COLORS = {"topk": "#4c78a8", "kron": "#54a24b"}  # other kinds: plotly's default palette
KIND_DASHES = ["solid", "dash", "dot", "dashdot"]
WIDTH_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "star"]


# --- comparisons: a metric against L0 or cost ---------------------------------------------------
def seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    """`summarize` over the seeds of each `compare_domains` setting, with `sae` naming the
    setting (e.g. `medical-jumprelu-w4608-l0_40`)."""
    summary = summarize(table, by=DOMAIN_GROUP)
    summary.insert(
        0,
        "sae",
        [group_name(r.trained_on, r.kind, r.width, r.target_l0) for r in summary.itertuples()],
    )
    return summary


def _panels(table: pd.DataFrame, evaluated_on: str | None) -> list[str | None]:
    """Evaluation sets to draw, one panel each: the one asked for, or all; [None] when the
    table has no `evaluated_on` column (one panel)."""
    if "evaluated_on" not in table.columns:
        if evaluated_on is not None:
            raise ValueError(f"the table has no evaluated_on column to pick {evaluated_on!r}")
        return [None]
    available = list(dict.fromkeys(table["evaluated_on"]))
    if evaluated_on is None:
        return available
    if evaluated_on not in available:
        raise ValueError(f"no rows evaluated on {evaluated_on!r}; the table has {available}")
    return [evaluated_on]


def _points(table: pd.DataFrame, metric: str, x: str) -> pd.DataFrame:
    """One row per point: the line and panel columns, `sae`, `x_`, `y_` and, with seeds,
    `x_std`, `y_std` (the seed mean and std of `x` and `metric`, 0 for one seed)."""
    if "seed" not in table.columns:
        return table.assign(x_=table[x], y_=table[metric])
    summary = seed_summary(table)
    for column in (metric, x):
        if f"{column}_mean" not in summary.columns:
            raise ValueError(
                f"{column!r} is not averaged over seeds; choose from the table's "
                f"{[c.removesuffix('_mean') for c in summary if c.endswith('_mean')]}"
            )
    return summary.assign(
        x_=summary[f"{x}_mean"],
        y_=summary[f"{metric}_mean"],
        x_std=summary[f"{x}_std"].fillna(0.0),
        y_std=summary[f"{metric}_std"].fillna(0.0),
    )


def _line_style(spec: dict, colors: dict, kinds: list, widths: list) -> dict:
    """Colour by training corpus (else kind), dash by kind beside a corpus colour, marker by
    width."""
    style = {
        "line": {
            "color": colors[spec["trained_on"]] if colors else KIND_COLORS.get(spec.get("kind"))
        },
        "marker": {"size": 9},
    }
    if colors and kinds:
        style["line"]["dash"] = KIND_DASHES[kinds.index(spec["kind"]) % len(KIND_DASHES)]
    if widths:
        style["marker"]["symbol"] = WIDTH_SYMBOLS[widths.index(spec["width"]) % len(WIDTH_SYMBOLS)]
    return style


def pareto_figure(
    table: pd.DataFrame,
    metric: str = "fvu",
    x: str = "l0",
    evaluated_on: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """`metric` against `x` (measured L0, or e.g. `encoder_multiply_adds`), one line per
    (trained_on, kind, width), whichever of those the table has.

    With a `seed` column, points are seed means with std error bars (`summarize`). With an
    `evaluated_on` column, one panel per evaluation set (or only `evaluated_on`); colour is
    the training corpus when the table has one, else the kind; marker is the width.
    """
    for column in (metric, x):
        if column not in table.columns:
            raise ValueError(f"the table has no {column!r} column; it has {list(table.columns)}")
    lines = [c for c in LINES if c in table.columns]
    if not lines:
        raise ValueError(f"the table has none of the line columns {LINES}")
    panels = _panels(table, evaluated_on)
    points = _points(table, metric, x)
    keys = list(table[lines].drop_duplicates().itertuples(index=False, name=None))
    colors = (
        {
            c: CORPUS_COLORS[i % len(CORPUS_COLORS)]
            for i, c in enumerate(dict.fromkeys(table["trained_on"]))
        }
        if "trained_on" in lines
        else {}
    )
    kinds = list(dict.fromkeys(table["kind"])) if "kind" in lines else []
    widths = sorted(table["width"].unique()) if "width" in lines else []
    if panels == [None]:
        fig, at = go.Figure(), lambda col: {}
    else:
        fig = make_subplots(
            rows=1, cols=len(panels), subplot_titles=[f"evaluated on {p}" for p in panels]
        )
        at = lambda col: {"row": 1, "col": col}
    for col, panel in enumerate(panels, start=1):
        shown = points if panel is None else points[points["evaluated_on"] == panel]
        groups = dict(list(shown.groupby(lines, sort=False)))
        for key in keys:
            if key not in groups:
                continue
            line = groups[key].sort_values("x_")
            label = " · ".join(
                f"w{v}" if c == "width" else str(v) for c, v in zip(lines, key, strict=True)
            )
            style = _line_style(dict(zip(lines, key, strict=True)), colors, kinds, widths)
            if "y_std" in line.columns:
                bar = {"type": "data", "visible": True, "thickness": 1}
                style["error_x"] = {**bar, "array": line["x_std"].tolist()}
                style["error_y"] = {**bar, "array": line["y_std"].tolist()}
                # seeds of this line's setting only: the summary groups by kind too
                style["customdata"] = line["n_seeds"].tolist()
                style["hovertemplate"] = (
                    f"%{{text}}<br>{x} %{{x:.4g}}<br>{metric} %{{y:.4g}}"
                    "<br>seeds %{customdata}<extra></extra>"
                )
            fig.add_trace(
                go.Scatter(
                    x=line["x_"],
                    y=line["y_"],
                    mode="lines+markers",
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                    text=line["sae"] if "sae" in line.columns else None,
                    **style,
                ),
                **at(col),
            )
        fig.update_xaxes(title_text="L0 (measured)" if x == "l0" else x, **at(col))
    fig.update_yaxes(title_text=metric, **at(1))
    better = "lower" if metric in LOWER_IS_BETTER else "higher"
    x_name = "L0" if x == "l0" else x
    fig.update_layout(
        title=title or f"{metric} vs {x_name} ({better} is better)",
        height=420,
        legend_title_text=" · ".join(c.replace("_", " ") for c in lines),
    )
    return fig


def ce_figure(table: pd.DataFrame, evaluated_on: str | None = None) -> go.Figure:
    """CE loss recovered vs measured L0, one line per training corpus, kind and width."""
    return pareto_figure(
        table, "ce_loss_recovered", evaluated_on=evaluated_on, title="CE loss recovered vs L0"
    )


def error_bars_figure(table: pd.DataFrame, evaluated_on: str | None = None) -> go.Figure:
    """Linear and nonlinear error FVU stacked per SAE setting ("dark matter", Engels et al.),
    seed means with std error bars."""
    summary = seed_summary(table)
    panels = _panels(summary, evaluated_on)
    fig = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[f"evaluated on {p}" for p in panels]
    )
    parts = [
        ("linear_error_fvu", "linear error", "#4c78a8"),
        ("nonlinear_error_fvu", "nonlinear error", "#e45756"),
    ]
    for col, panel in enumerate(panels, start=1):
        rows = summary[summary["evaluated_on"] == panel]
        for metric, label, color in parts:
            fig.add_trace(
                go.Bar(
                    x=rows["sae"],
                    y=rows[f"{metric}_mean"],
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                    marker_color=color,
                    error_y={
                        "type": "data",
                        "array": rows[f"{metric}_std"].fillna(0.0).tolist(),
                        "visible": True,
                    },
                ),
                row=1,
                col=col,
            )
    fig.update_yaxes(title_text="share of activation variance (FVU)", row=1, col=1)
    fig.update_layout(
        title="SAE error: linearly predictable vs nonlinear part", barmode="stack", height=460
    )
    return fig


# --- residual SAEs (Koriagin et al., arXiv 2507.12990) ------------------------------------------
def retention_figure(
    table: pd.DataFrame,
    domain: str = "medical",
    broad: str = "broad",
    gain: str = "ce_loss_recovered",
) -> go.Figure:
    """Domain gain vs general retention: each SAE's `gain` metric on `domain` text minus the
    base's (y) against its broad CE loss recovered as a share of the base's (x)."""
    dom = table[table["evaluated_on"] == domain].set_index("sae")
    gen = table[table["evaluated_on"] == broad].set_index("sae")
    if dom.empty or gen.empty:
        raise ValueError(f"the table needs rows evaluated on {domain!r} and {broad!r}")
    base_gain = dom.loc[dom["role"] == "base", gain].iloc[0]
    fig = go.Figure()
    styles = {
        "base": ("#888888", "circle"),
        "base+residual": ("#e45756", "diamond"),
        "domain-only": ("#4c78a8", "square"),
    }
    for role, (color, symbol) in styles.items():
        names = dom.index[dom["role"] == role]
        if len(names) == 0:
            continue
        fig.add_trace(
            go.Scatter(
                x=100 * gen.loc[names, "ce_loss_recovered_vs_base"],
                y=dom.loc[names, gain] - base_gain,
                mode="markers+text",
                name=role,
                text=[f"+{w}" if w else "" for w in dom.loc[names, "residual_width"]],
                textposition="top center",
                marker={"color": color, "symbol": symbol, "size": 11},
                hovertext=list(names),
            )
        )
    fig.add_vline(x=99, line_dash="dot", annotation_text="99% of base")
    fig.update_layout(
        title=f"{domain} gain vs {broad} retention",
        height=420,
        xaxis_title=f"{broad} CE loss recovered, % of the base SAE's",
        yaxis_title=f"{domain} {gain}: gain over the base SAE",
    )
    return fig
