"""Every plotly figure of saelab, and the self-contained HTML report (opens offline).

Plain functions returning `plotly.graph_objects.Figure`, so notebooks, the dashboards and
`saelab quickstart`'s report show the same pictures: `one_sae` holds those of one SAE
(training curves, firing and decoder-redundancy histograms, a metrics table) and
`write_report`; `comparisons` the papers' comparisons of SAEs (a metric against L0 or encoder
cost, the error split, residual retention); `flow` those of cross-layer feature flow and
steering (group shares per layer, deactivation, the steering frontier, flow graphs);
`export.save` writes any of them as PDF, PNG, SVG (kaleido, system Chromium) or HTML.
"""

from saelab.figures.comparisons import (
    CORPUS_COLORS,
    KIND_COLORS,
    KIND_DASHES,
    LINES,
    LOWER_IS_BETTER,
    WIDTH_SYMBOLS,
    ce_figure,
    error_bars_figure,
    pareto_figure,
    retention_figure,
    seed_summary,
)
from saelab.figures.export import BrowserNotFoundError, save
from saelab.figures.flow import (
    deactivation_figure,
    deactivation_sweep_figure,
    edge_width,
    flow_graph_figure,
    flow_graph_positions,
    group_shares_figure,
    steering_frontier_figure,
)
from saelab.figures.one_sae import (
    density_histogram,
    l0_histogram,
    metrics_table,
    redundancy_figure,
    training_curves,
    write_report,
)

__all__ = [
    "BrowserNotFoundError",
    "CORPUS_COLORS",
    "KIND_COLORS",
    "KIND_DASHES",
    "LINES",
    "LOWER_IS_BETTER",
    "WIDTH_SYMBOLS",
    "ce_figure",
    "deactivation_figure",
    "deactivation_sweep_figure",
    "density_histogram",
    "edge_width",
    "error_bars_figure",
    "flow_graph_figure",
    "flow_graph_positions",
    "group_shares_figure",
    "l0_histogram",
    "metrics_table",
    "pareto_figure",
    "redundancy_figure",
    "retention_figure",
    "save",
    "seed_summary",
    "steering_frontier_figure",
    "training_curves",
    "write_report",
]
