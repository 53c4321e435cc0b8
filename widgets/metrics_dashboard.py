"""Interactive dashboard over a metrics table: `compare_domains`, `evaluate` or a sweep's.

``MetricsDashboard(table)`` is an ``ipywidgets.VBox``: end a notebook cell with it to display
a metric dropdown, an ``evaluated_on`` dropdown, ``trained_on``, kind and width
multi-selects, a plotly Pareto plot (the chosen metric against measured L0, drawn by
``saelab.figures.pareto_figure``: one line per (trained_on, kind, width), seed means with
std error bars, so different kinds are never averaged together) and an HTML table of the
selected rows. Every control change redraws both. Only pandas and plotly are used: nothing
here loads a model. Controls carry the CSS classes of notes/UI_CONTRACT.md.
"""

from __future__ import annotations

import re

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go

from saelab.figures import pareto_figure
from saelab.metrics import SUMMARY_METRICS

#: Columns identifying an SAE and its evaluation corpus, shown in the table next to the metric.
ID_COLUMNS = ("sae", "kind", "trained_on", "evaluated_on", "width", "seed", "target_l0", "l0")
#: Metrics the dashboard can plot against L0 (the x axis), when the table has them.
PLOT_METRICS = tuple(m for m in SUMMARY_METRICS if m != "l0")
#: Filled for tables that do not say (e.g. `saelab.evaluate`'s): one value for every row.
UNKNOWN = "unknown"
#: `evaluate`'s default SAE names: `{kind}-{width}`, a `-2` for repeats, `@k8` with `ks`.
DEFAULT_NAME = re.compile(r"(?P<kind>.+?)-(?P<width>\d+)(?:-\d+)?(?:@k\d+)?")
#: The evaluation set a domain comparison opens on when the table has it.
DOMAIN = "medical"


def _from_saes(saes) -> dict[str, tuple[str, int]]:
    """{name: (kind, width)} from what was passed to `evaluate` (one SAE, a list or a dict)."""
    if saes is None:
        return {}
    from saelab.metrics.evaluate import name_saes

    return {
        name: (s.cfg.kind or type(s).__name__, int(s.cfg.width))
        for name, s in name_saes(saes).items()
    }


def dashboard_table(table: pd.DataFrame, saes=None) -> pd.DataFrame:
    """`table` with every `ID_COLUMNS` column the dashboard filters on, filled when missing.

    Needs `l0` and at least one of `PLOT_METRICS`. Missing `kind` and `width` come from
    `saes` (what was passed to `evaluate`), else from `evaluate`'s default names
    (`jumprelu-4608`), else `total_width` for the width; `trained_on` and `evaluated_on`
    become "unknown"; `target_l0` is `k` when the table has it. Without a `seed` column
    every row is its own point (no seed averaging).
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(table).__name__}")
    if table.empty:
        raise ValueError("metrics table is empty")
    metrics = [m for m in PLOT_METRICS if m in table.columns]
    if "l0" not in table.columns or not metrics:
        raise ValueError(
            "MetricsDashboard needs an 'l0' column and at least one metric of "
            f"{', '.join(PLOT_METRICS)}; the table has {', '.join(map(str, table.columns))}"
        )
    t = table.reset_index(drop=True).copy()
    names = t["sae"].astype(str) if "sae" in t.columns else pd.Series(t.index.astype(str))
    t["sae"] = names
    known = _from_saes(saes)
    parsed = {n: m.groupdict() for n in names if (m := DEFAULT_NAME.fullmatch(n))}
    if "kind" not in t.columns:
        t["kind"] = [
            known[n][0] if n in known else parsed.get(n, {}).get("kind", UNKNOWN) for n in names
        ]
    if "width" not in t.columns:
        if "total_width" in t.columns:
            t["width"] = t["total_width"]
        else:
            width = {
                n: known[n][1] if n in known else parsed.get(n, {}).get("width") for n in names
            }
            unknown = [n for n, w in width.items() if w is None]
            if unknown:
                raise ValueError(
                    f"cannot tell the width of SAE {unknown[0]!r}: add a 'width' column or pass "
                    "saes= (what you passed to saelab.evaluate)"
                )
            t["width"] = [int(width[n]) for n in names]
    for column in ("trained_on", "evaluated_on"):
        if column not in t.columns:
            t[column] = UNKNOWN
    if "target_l0" not in t.columns:
        if "seed" in t.columns and "k" not in t.columns:
            raise ValueError(
                "a table with seeds needs a 'target_l0' (or 'k') column to tell which rows "
                "are seeds of one setting"
            )
        t["target_l0"] = t["k"] if "k" in t.columns else float("nan")
    t["width"] = t["width"].astype(int)
    return t


def default_evaluated_on(sets: list[str]) -> str:
    """The domain set when there is one (`DOMAIN`, else any but "broad"), else the first."""
    if DOMAIN in sets:
        return DOMAIN
    return next((s for s in sets if s != "broad"), sets[0])


def _select_all(options: list, description: str, css: str, labels=None) -> widgets.SelectMultiple:
    """A SelectMultiple with everything selected, its label shown whole."""
    select = widgets.SelectMultiple(
        options=list(zip(labels, options, strict=True)) if labels else options,
        value=tuple(options),
        rows=min(len(options), 5),
        description=description,
        style={"description_width": "initial"},
        layout={"width": "auto"},
    )
    select.add_class(css)
    return select


class MetricsDashboard(widgets.VBox):
    """Pareto plot and table over a metrics table, driven by five controls.

    `table`: a `compare_domains` table, a sweep's, or `saelab.evaluate`'s (missing columns
    are filled by `dashboard_table`; `saes` helps it name kinds and widths). Attributes:
    ``metric`` (the table's `PLOT_METRICS`) and ``evaluated_on`` (Dropdowns; the domain
    set first), ``trained_on``, ``kinds`` and ``widths`` (SelectMultiples, everything
    selected at first), ``figure`` (a plotly ``FigureWidget``) and ``table_html``.
    """

    def __init__(self, table: pd.DataFrame, metric: str = "fvu", saes=None, evaluated_on=None):
        self.table = dashboard_table(table, saes)
        metrics = [m for m in PLOT_METRICS if m in self.table.columns]
        if metric not in metrics:
            raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(metrics)}")
        sets = sorted(self.table["evaluated_on"].unique())
        evaluated_on = evaluated_on or default_evaluated_on(sets)
        if evaluated_on not in sets:
            raise ValueError(f"no rows evaluated on {evaluated_on!r}; the table has {sets}")
        label = {"description_width": "initial"}
        self.metric = widgets.Dropdown(
            options=metrics, value=metric, description="metric", style=label
        )
        self.evaluated_on = widgets.Dropdown(
            options=sets, value=evaluated_on, description="evaluated on", style=label
        )
        self.metric.add_class("saelab-md-metric")
        self.evaluated_on.add_class("saelab-md-evaluated-on")
        trained = sorted(self.table["trained_on"].unique())
        kinds = sorted(self.table["kind"].unique())
        widths = sorted(int(w) for w in self.table["width"].unique())
        self.trained_on = _select_all(trained, "trained on", "saelab-md-trained-on")
        self.kinds = _select_all(kinds, "kind", "saelab-md-kind")
        self.widths = _select_all(widths, "width", "saelab-md-widths", [str(w) for w in widths])
        self.figure = go.FigureWidget(
            layout=go.Layout(
                xaxis_title="L0 (measured)",
                legend_title_text="trained on · kind · width",
                showlegend=True,  # plotly hides a one-trace legend; keep the line's name
                height=450,
                margin={"l": 60, "r": 20, "t": 50, "b": 50},
            )
        )
        self.figure.add_class("saelab-md-figure")
        self.table_html = widgets.HTML()
        controls = widgets.HBox(
            [
                widgets.VBox([self.metric, self.evaluated_on]),
                self.trained_on,
                self.kinds,
                self.widths,
            ]
        )
        super().__init__(children=[controls, self.figure, self.table_html])
        for control in self.controls():
            control.observe(self._on_change, names="value")
        self.refresh()

    def controls(self) -> tuple:
        return (self.metric, self.evaluated_on, self.trained_on, self.kinds, self.widths)

    def selected_rows(self) -> pd.DataFrame:
        """The rows matching the current ``evaluated_on``, ``trained_on``, kinds and widths."""
        t = self.table
        mask = (
            (t["evaluated_on"] == self.evaluated_on.value)
            & t["trained_on"].isin(self.trained_on.value)
            & t["kind"].isin(self.kinds.value)
            & t["width"].isin(self.widths.value)
        )
        return t[mask]

    def refresh(self) -> None:
        """Redraw the plot and the table from the current control values."""
        metric = self.metric.value
        rows = self.selected_rows()
        traces = pareto_figure(rows, metric).data if len(rows) else ()
        with self.figure.batch_update():
            self.figure.data = ()
            self.figure.add_traces(list(traces))
            self.figure.layout.yaxis.title.text = metric
            self.figure.layout.title.text = (
                f"{metric} vs L0 — evaluated on {self.evaluated_on.value}"
            )
        columns = [c for c in ID_COLUMNS if c in rows.columns]
        order = [c for c in ("trained_on", "kind", "width", "target_l0", "seed") if c in columns]
        shown = rows.loc[:, [*columns, metric]].sort_values(order, kind="stable")
        self.table_html.value = (
            shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="—", border=0)
            if len(shown)
            else "<p><i>no rows match the selection</i></p>"
        )

    def _on_change(self, _change) -> None:
        self.refresh()
