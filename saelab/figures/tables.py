"""Report figures for a saved experiment table, chosen by the table's columns.

`saelab report` (and anyone with a CSV) turns any table saelab writes into the figures its
command or notebook shows: `compare_domains`, `compare_residual`, `compare_hierarchical` and
`compare_kron` tables (`table.csv`), `saelab.evaluate`'s, the quickstart's `metrics.json`
and `history.csv`, and `saelab flow`'s `groups.csv` and `deactivation.csv`. `recognise`
names a table by the columns it must have (`TABLE_COLUMNS`, most specific first);
`table_figures` draws it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import plotly.graph_objects as go

from saelab.figures.comparisons import (
    ce_figure,
    error_bars_figure,
    pareto_figure,
    retention_figure,
    seed_summary,
)
from saelab.figures.flow import deactivation_figure, group_shares_figure
from saelab.figures.one_sae import training_curves
from saelab.metrics import SUMMARY_METRICS

#: Table name -> columns it must have; the first match names a table.
TABLE_COLUMNS = {
    "flow groups": ("layer", "null", "group", "count", "share", "n_pairs", "n_tokens"),
    "flow deactivation": ("layer", "method", "ac", "success"),
    "training history": ("tokens", "fvu", "l0", "dead_fraction"),
    "residual SAEs": ("sae", "role", "residual_width", "evaluated_on", "l0"),
    "domain comparison": ("trained_on", "evaluated_on", "kind", "width", "seed", "target_l0", "l0"),
    "KronSAE vs TopK": ("kind", "width", "k", "encoder_multiply_adds", "l0"),
    "HierarchicalTopK vs TopK": ("kind", "width", "k", "l0"),
    "evaluation": ("sae", "l0"),
}
LINEAR_PARTS = ("linear_error_fvu", "nonlinear_error_fvu")


def recognise(table: pd.DataFrame) -> str:
    """The `TABLE_COLUMNS` name of `table`, or a ValueError listing what each needs."""
    for name, columns in TABLE_COLUMNS.items():
        if set(columns) <= set(table.columns):
            return name
    needs = "; ".join(f"{name}: {', '.join(cols)}" for name, cols in TABLE_COLUMNS.items())
    raise ValueError(
        f"unrecognised table with columns {', '.join(map(str, table.columns))}; saelab "
        f"report draws tables that have the columns of one of: {needs}"
    )


def table_figure(table: pd.DataFrame, title: str) -> go.Figure:
    """The rows of `table` as a plotly table (floats to 4 significant digits)."""
    cells = [
        [f"{v:.4g}" if isinstance(v, float) else str(v) for v in table[column]]
        for column in table.columns
    ]
    fig = go.Figure(
        go.Table(header={"values": [str(c) for c in table.columns]}, cells={"values": cells})
    )
    fig.update_layout(title=title, height=min(900, 120 + 24 * len(table)))
    return fig


def _metrics(table: pd.DataFrame) -> list[str]:
    return [m for m in SUMMARY_METRICS if m in table.columns]


def _pareto_figures(table: pd.DataFrame) -> list[go.Figure]:
    """fvu vs L0 and CE loss recovered vs L0, those the table has metrics for."""
    figs = [pareto_figure(table, "fvu")] if "fvu" in table.columns else []
    if "ce_loss_recovered" in table.columns:
        figs.append(ce_figure(table))
    return figs


def _comparison(table: pd.DataFrame, spec: list[str], title: str) -> list[go.Figure]:
    """The rows (spec and headline metrics) and `_pareto_figures`."""
    return [table_figure(table[[*spec, *_metrics(table)]], title), *_pareto_figures(table)]


def _domain_figures(table: pd.DataFrame) -> list[go.Figure]:
    summary = seed_summary(table)
    means = [c for c in summary.columns if c.endswith("_mean")]
    figs = [table_figure(summary[["sae", "evaluated_on", "n_seeds", *means]], "Seed means")]
    figs += _pareto_figures(table)
    if set(LINEAR_PARTS) <= set(table.columns):
        figs.append(error_bars_figure(table))
    return figs


def _residual_figures(table: pd.DataFrame) -> list[go.Figure]:
    spec = ["sae", "role", "residual_width", "evaluated_on"]
    figs = [table_figure(table[[*spec, *_metrics(table)]], "Residual SAEs")]
    sets = list(dict.fromkeys(table["evaluated_on"]))
    if "broad" in sets and len(sets) > 1 and "ce_loss_recovered_vs_base" in table.columns:
        domain = next(s for s in sets if s != "broad")
        figs.append(retention_figure(table, domain=domain, broad="broad"))
    return figs


def groups_results(table: pd.DataFrame) -> tuple[list, list]:
    """(observed, null) per-layer results from `groups.csv`, with the fields
    `group_shares_figure` reads (as `saelab.flow.PredecessorGroups` has them)."""
    results = {False: [], True: []}
    for (layer, null), rows in table.groupby(["layer", "null"], sort=True):
        agreement = rows["exact_agreement"].iloc[0] if "exact_agreement" in rows else None
        results[bool(null)].append(
            SimpleNamespace(
                layer=int(layer),
                null=bool(null),
                groups=tuple(rows["group"]),
                shares_G=rows["share"].to_numpy(),
                counts_G=rows["count"].to_numpy(),
                n_pairs=int(rows["n_pairs"].iloc[0]),
                exact_agreement=None if pd.isna(agreement) else float(agreement),
            )
        )
    return results[False], results[True]


def _deactivation_figures(table: pd.DataFrame) -> list[go.Figure]:
    from saelab.flow import summarize_deactivation

    figs = []
    for layer, rows in table.groupby("layer", sort=True):
        fig = deactivation_figure(summarize_deactivation(rows))
        figs.append(fig.update_layout(title=f"Deactivating a predecessor, layer {layer}"))
    return figs


def table_figures(table: pd.DataFrame) -> list[go.Figure]:
    """The report figures of a saved table (`recognise` says which kind it is)."""
    if table.empty:
        raise ValueError("the table is empty")
    name = recognise(table)
    if name == "flow groups":
        return [group_shares_figure(*groups_results(table))]
    if name == "flow deactivation":
        return _deactivation_figures(table)
    if name == "training history":
        return [training_curves(table.to_dict("records"))]
    if name == "residual SAEs":
        return _residual_figures(table)
    if name == "domain comparison":
        return _domain_figures(table)
    if name == "KronSAE vs TopK":
        figs = _comparison(table, ["sae", "kind", "width", "k"], name)
        if "fvu" in table.columns:
            cost = "fvu vs encoder multiply-adds per token"
            figs.append(pareto_figure(table, "fvu", x="encoder_multiply_adds", title=cost))
        return figs
    if name == "HierarchicalTopK vs TopK":
        return _comparison(table, [c for c in ("sae", "kind", "width", "k") if c in table], name)
    return [table_figure(table[["sae", *_metrics(table)]], "Held-out metrics")]
