"""ipywidgets dashboards over the saelab core."""

from .metrics_dashboard import MetricsDashboard

__all__ = ["MetricsDashboard"]
