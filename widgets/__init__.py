"""ipywidgets dashboards over the saelab core."""

from .feature_explorer import FeatureExplorer
from .flow_explorer import FlowExplorer
from .metrics_dashboard import MetricsDashboard

__all__ = ["FeatureExplorer", "FlowExplorer", "MetricsDashboard"]
