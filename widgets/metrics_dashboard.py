"""Interactive dashboard over the tidy metrics table from ``saelab.compare_domains``.

``MetricsDashboard(table)`` is an ``ipywidgets.VBox``: end a notebook cell with it to display
a metric dropdown, an ``evaluated_on`` dropdown, ``trained_on`` and width multi-selects, a
plotly Pareto plot (the chosen metric against measured L0, one line per (trained_on, width),
means over seeds with standard-error bars) and an HTML table of the selected rows. Every
control change redraws both. Only pandas and plotly are used: nothing here loads a model.
"""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

#: Numeric metric columns offered in the metric dropdown (plotted against measured ``l0``).
METRICS = (
    "fvu",
    "explained_variance",
    "ce_loss_recovered",
    "delta_ce",
    "kl",
    "linear_error_r2",
    "linear_error_fvu",
    "nonlinear_error_fvu",
    "dead_fraction",
)

#: Columns identifying an SAE and its evaluation corpus, shown in the table next to the metric.
ID_COLUMNS = ("sae", "kind", "trained_on", "evaluated_on", "width", "seed", "l0_target", "l0")

#: Every column ``MetricsDashboard`` needs in its input table.
REQUIRED_COLUMNS = ID_COLUMNS + METRICS

_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def validate_table(table: pd.DataFrame) -> None:
    """Raise if ``table`` is not a non-empty DataFrame with all ``REQUIRED_COLUMNS``."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"metrics table is missing columns: {', '.join(missing)}")
    if table.empty:
        raise ValueError("metrics table is empty")


def pareto_points(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (trained_on, width, l0_target): seed means of ``l0`` and ``metric``, its standard
    error (NaN for a single seed) and the seed count, sorted by mean ``l0`` within each line."""
    grouped = table.groupby(["trained_on", "width", "l0_target"], sort=True)
    points = grouped.agg(
        l0=("l0", "mean"),
        mean=(metric, "mean"),
        sem=(metric, "sem"),
        n=(metric, "size"),
    ).reset_index()
    return points.sort_values(["trained_on", "width", "l0"], kind="stable").reset_index(drop=True)


class MetricsDashboard(widgets.VBox):
    """Pareto plot and table over a ``compare_domains`` table, driven by four controls.

    Attributes: ``metric`` and ``evaluated_on`` (Dropdowns), ``trained_on`` and ``widths``
    (SelectMultiples, everything selected at first), ``figure`` (a plotly ``FigureWidget``),
    ``table_html`` (an ``ipywidgets.HTML``) and ``widget`` (the dashboard itself).
    """

    def __init__(self, table: pd.DataFrame, metric: str = "fvu"):
        validate_table(table)
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        self.table = table.reset_index(drop=True)
        trained = sorted(self.table["trained_on"].unique())
        widths = sorted(int(w) for w in self.table["width"].unique())
        palette = qualitative.Plotly
        self._colors = {t: palette[i % len(palette)] for i, t in enumerate(trained)}
        self._dashes = {w: _DASHES[i % len(_DASHES)] for i, w in enumerate(widths)}

        self.metric = widgets.Dropdown(options=list(METRICS), value=metric, description="metric")
        self.evaluated_on = widgets.Dropdown(
            options=sorted(self.table["evaluated_on"].unique()), description="evaluated on"
        )
        self.trained_on = widgets.SelectMultiple(
            options=trained, value=tuple(trained), rows=min(len(trained), 5),
            description="trained on",
        )
        self.widths = widgets.SelectMultiple(
            options=[(str(w), w) for w in widths], value=tuple(widths),
            rows=min(len(widths), 5), description="width",
        )
        self.figure = go.FigureWidget(
            layout=go.Layout(
                xaxis_title="L0 (measured)", legend_title_text="trained on · width",
                height=450, margin={"l": 60, "r": 20, "t": 50, "b": 50},
            )
        )
        self.table_html = widgets.HTML()
        controls = widgets.HBox([
            widgets.VBox([self.metric, self.evaluated_on]), self.trained_on, self.widths,
        ])
        super().__init__(children=[controls, self.figure, self.table_html])
        for control in (self.metric, self.evaluated_on, self.trained_on, self.widths):
            control.observe(self._on_change, names="value")
        self.refresh()

    @property
    def widget(self) -> widgets.VBox:
        """The top-level widget (the dashboard itself)."""
        return self

    def selected_rows(self) -> pd.DataFrame:
        """The table rows matching the current ``evaluated_on``, ``trained_on`` and width."""
        t = self.table
        mask = (
            (t["evaluated_on"] == self.evaluated_on.value)
            & t["trained_on"].isin(self.trained_on.value)
            & t["width"].isin(self.widths.value)
        )
        return t[mask]

    def refresh(self) -> None:
        """Redraw the plot and the table from the current control values."""
        metric = self.metric.value
        rows = self.selected_rows()
        points = pareto_points(rows, metric)
        traces = []
        for (trained_on, width), line in points.groupby(["trained_on", "width"], sort=True):
            several = bool((line["n"] > 1).any())
            sem = line["sem"].fillna(0).to_numpy()
            traces.append(go.Scatter(
                x=line["l0"].to_numpy(), y=line["mean"].to_numpy(),
                error_y={"type": "data", "array": sem, "visible": several},
                mode="lines+markers", name=f"{trained_on} · {int(width)}",
                line={"color": self._colors[trained_on], "dash": self._dashes[int(width)]},
                customdata=np.stack([line["l0_target"], line["n"]], axis=-1),
                hovertemplate=(f"L0 %{{x:.3g}}<br>{metric} %{{y:.4g}}"
                               "<br>L0 target %{customdata[0]}<br>seeds %{customdata[1]}"),
            ))
        with self.figure.batch_update():
            self.figure.data = ()
            self.figure.add_traces(traces)
            self.figure.layout.yaxis.title.text = metric
            self.figure.layout.title.text = (
                f"{metric} vs L0 — evaluated on {self.evaluated_on.value}"
            )
        shown = rows.loc[:, list(ID_COLUMNS) + [metric]].sort_values(
            ["trained_on", "width", "l0_target", "seed"], kind="stable"
        )
        self.table_html.value = (
            shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="—", border=0)
            if len(shown) else "<p><i>no rows match the selection</i></p>"
        )

    def _on_change(self, _change) -> None:
        self.refresh()
