"""ipywidgets dashboards over the saelab core."""

from .feature_explorer import FeatureExplorer
from .metrics_dashboard import MetricsDashboard

__all__ = ["FeatureExplorer", "MetricsDashboard"]
