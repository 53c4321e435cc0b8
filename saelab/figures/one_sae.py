"""Figures of one trained SAE, and the self-contained HTML report that bundles figures.

Training curves (FVU, L0, dead fraction against training tokens), how many latents fire per
token, how often each latent fires, how close a residual block's decoder rows lie to its
base's, and a table of held-out metrics: what `saelab quickstart` puts in its report and the
notebooks show. `write_report` inlines plotly.js once, so the report opens offline.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from saelab.io import write_text


def training_curves(history: list[dict]) -> go.Figure:
    """FVU, L0 and dead fraction against training tokens (the dead fraction on [0, 1.1 max],
    at least [0, 0.01])."""
    tokens = [h["tokens"] for h in history]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("FVU (batch)", "L0", "dead fraction"))
    for col, key in enumerate(("fvu", "l0", "dead_fraction"), start=1):
        fig.add_trace(
            go.Scatter(x=tokens, y=[h[key] for h in history], mode="lines", name=key),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="training tokens", row=1, col=col)
    fig.update_yaxes(type="log", row=1, col=1)
    # a share: from 0, never the [-1, 1] plotly picks when every value is 0
    dead = max((h["dead_fraction"] for h in history), default=0.0)
    fig.update_yaxes(range=[0, min(1.0, max(0.01, 1.1 * dead))], row=1, col=3)
    fig.update_layout(title="Training curves", showlegend=False, height=340)
    return fig


def l0_histogram(l0_N) -> go.Figure:
    """How many latents fire per token (`l0_N`: `saelab.sae.fires(codes).sum(1)`)."""
    l0_N = np.asarray(l0_N)
    fig = go.Figure(go.Histogram(x=l0_N, nbinsx=60))
    fig.update_layout(
        title=f"L0 per token (mean {l0_N.mean():.1f})",
        xaxis_title="active latents",
        yaxis_title="tokens",
        height=340,
    )
    return fig


def density_histogram(density_F) -> go.Figure:
    """log10 firing frequency of each latent (`features.feature_stats(...).density_F`);
    latents that never fire are counted in the title."""
    density_F = np.asarray(density_F)
    alive = density_F[density_F > 0]
    never = int((density_F == 0).sum())
    fig = go.Figure(go.Histogram(x=np.log10(alive), nbinsx=60))
    fig.update_layout(
        title=f"Feature density ({never} of {len(density_F)} latents never fire)",
        xaxis_title="log10 firing frequency",
        yaxis_title="latents",
        height=340,
    )
    return fig


def redundancy_figure(redundancy, block: str = "residual", reference: str = "base") -> go.Figure:
    """Histograms of each `block` decoder row's largest |cosine| with the `reference` rows,
    beside the reference's own nearest-neighbour cosines (`features.decoder_redundancy`)."""
    fig = go.Figure()
    for values, name, color in (
        (redundancy.reference_F, f"{reference} row vs other {reference} rows", "#888888"),
        (redundancy.block_F, f"{block} row vs {reference} rows", "#e45756"),
    ):
        fig.add_trace(
            go.Histogram(
                x=values.tolist(),
                name=name,
                marker_color=color,
                opacity=0.6,
                histnorm="probability",
                xbins={"start": 0, "end": 1, "size": 0.02},
            )
        )
    fig.update_layout(
        barmode="overlay",
        height=380,
        title=f"Decoder redundancy: {block} vs {reference}",
        xaxis_title="largest |cosine| with a reference decoder row",
        yaxis_title="share of rows",
    )
    return fig


def metrics_table(metrics: dict) -> go.Figure:
    """A two-column table of held-out metrics (floats to 4 significant digits)."""
    keys = list(metrics)
    values = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in metrics.values()]
    fig = go.Figure(
        go.Table(header={"values": ["metric", "value"]}, cells={"values": [keys, values]})
    )
    fig.update_layout(title="Held-out metrics", height=60 + 24 * len(keys))
    return fig


def write_report(path: str | Path, title: str, figures: list[go.Figure], notes: str = "") -> Path:
    """One HTML file with plotly.js inlined once, so it opens without a network; atomic."""
    parts = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)
    ]
    body = "\n".join(f"<div class='fig'>{p}</div>" for p in parts)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(notes)}</p>{body}</body></html>"
    )
    return write_text(path, page)
