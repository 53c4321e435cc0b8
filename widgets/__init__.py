"""ipywidgets dashboards over the saelab core."""

from .feature_explorer import FeatureExplorer
from .feature_export import export_feature_dashboard
from .flow_explorer import FlowExplorer
from .metrics_dashboard import MetricsDashboard

__all__ = ["FeatureExplorer", "FlowExplorer", "MetricsDashboard", "export_feature_dashboard"]
