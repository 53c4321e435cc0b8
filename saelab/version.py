"""The package version, written into every saved SAE's cfg.json (read by pyproject too)."""

__version__ = "0.1.0"
