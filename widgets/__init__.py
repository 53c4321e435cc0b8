"""ipywidgets dashboards over the saelab core."""
