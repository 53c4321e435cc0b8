"""SAE metrics (docs/methods.md, "Metrics"): reconstruction, linear residual error, CE / KL,
and `evaluate`, which runs them all at a hookpoint and returns one table row per SAE."""

from saelab.metrics.ce import CE_COLUMNS, ce_loss_recovered, ce_metrics
from saelab.metrics.evaluate import evaluate, metrics_dict
from saelab.metrics.linear_error import LINEAR_COLUMNS, LinearErrorAccumulator, linear_error
from saelab.metrics.reconstruction import (
    DENSE_THRESHOLD,
    RECONSTRUCTION_COLUMNS,
    Moments,
    ReconstructionAccumulator,
    reconstruction_metrics,
)

# The headline columns that experiment tables, dashboards and the quickstart show.
SUMMARY_METRICS = [
    "l0",
    "explained_variance",
    "fvu",
    "ce_loss_recovered",
    "delta_ce",
    "kl",
    "linear_error_r2",
    "linear_error_fvu",
    "nonlinear_error_fvu",
    "dead_fraction",
    "dense_fraction",
]

__all__ = [
    "CE_COLUMNS",
    "DENSE_THRESHOLD",
    "LINEAR_COLUMNS",
    "RECONSTRUCTION_COLUMNS",
    "SUMMARY_METRICS",
    "LinearErrorAccumulator",
    "Moments",
    "ReconstructionAccumulator",
    "ce_loss_recovered",
    "ce_metrics",
    "evaluate",
    "linear_error",
    "metrics_dict",
    "reconstruction_metrics",
]
