"""Interactive dashboard over the tidy metrics table from ``saelab.compare_domains``.

``MetricsDashboard(table)`` is an ``ipywidgets.VBox``: end a notebook cell with it to display
a metric dropdown, an ``evaluated_on`` dropdown, ``trained_on`` and width multi-selects, a
plotly Pareto plot (the chosen metric against measured L0, drawn by
``saelab.figures.pareto_figure``: one line per (trained_on, kind, width), seed means with
std error bars) and an HTML table of the selected rows. Every control change redraws both.
Only pandas and plotly are used: nothing here loads a model.
"""

from __future__ import annotations

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go

from saelab.figures import pareto_figure
from saelab.metrics import SUMMARY_METRICS

#: Columns identifying an SAE and its evaluation corpus, shown in the table next to the metric.
ID_COLUMNS = ("sae", "kind", "trained_on", "evaluated_on", "width", "seed", "target_l0", "l0")

#: Every column ``MetricsDashboard`` needs in its input table.
REQUIRED_COLUMNS = ID_COLUMNS + tuple(m for m in SUMMARY_METRICS if m not in ID_COLUMNS)


def validate_table(table: pd.DataFrame) -> None:
    """Raise if ``table`` is not a non-empty DataFrame with all ``REQUIRED_COLUMNS``."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"metrics table is missing columns: {', '.join(missing)}")
    if table.empty:
        raise ValueError("metrics table is empty")


class MetricsDashboard(widgets.VBox):
    """Pareto plot and table over a ``compare_domains`` table, driven by four controls.

    Attributes: ``metric`` (the ``SUMMARY_METRICS`` but L0, the x axis) and ``evaluated_on``
    (Dropdowns), ``trained_on`` and ``widths`` (SelectMultiples, everything selected at
    first), ``figure`` (a plotly ``FigureWidget``) and ``table_html`` (an ``ipywidgets.HTML``).
    """

    def __init__(self, table: pd.DataFrame, metric: str = "fvu"):
        validate_table(table)
        metrics = [m for m in SUMMARY_METRICS if m != "l0"]
        if metric not in metrics:
            raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(metrics)}")
        self.table = table.reset_index(drop=True)
        trained = sorted(self.table["trained_on"].unique())
        widths = sorted(int(w) for w in self.table["width"].unique())

        self.metric = widgets.Dropdown(options=metrics, value=metric, description="metric")
        self.evaluated_on = widgets.Dropdown(
            options=sorted(self.table["evaluated_on"].unique()), description="evaluated on"
        )
        self.trained_on = widgets.SelectMultiple(
            options=trained,
            value=tuple(trained),
            rows=min(len(trained), 5),
            description="trained on",
        )
        self.widths = widgets.SelectMultiple(
            options=[(str(w), w) for w in widths],
            value=tuple(widths),
            rows=min(len(widths), 5),
            description="width",
        )
        self.figure = go.FigureWidget(
            layout=go.Layout(
                xaxis_title="L0 (measured)",
                legend_title_text="trained on · kind · width",
                height=450,
                margin={"l": 60, "r": 20, "t": 50, "b": 50},
            )
        )
        self.table_html = widgets.HTML()
        controls = widgets.HBox(
            [
                widgets.VBox([self.metric, self.evaluated_on]),
                self.trained_on,
                self.widths,
            ]
        )
        super().__init__(children=[controls, self.figure, self.table_html])
        for control in (self.metric, self.evaluated_on, self.trained_on, self.widths):
            control.observe(self._on_change, names="value")
        self.refresh()

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
        traces = pareto_figure(rows, metric).data if len(rows) else ()
        with self.figure.batch_update():
            self.figure.data = ()
            self.figure.add_traces(list(traces))
            self.figure.layout.yaxis.title.text = metric
            self.figure.layout.title.text = (
                f"{metric} vs L0 — evaluated on {self.evaluated_on.value}"
            )
        shown = rows.loc[:, list(ID_COLUMNS) + [metric]].sort_values(
            ["trained_on", "width", "target_l0", "seed"], kind="stable"
        )
        self.table_html.value = (
            shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="—", border=0)
            if len(shown)
            else "<p><i>no rows match the selection</i></p>"
        )

    def _on_change(self, _change) -> None:
        self.refresh()
