"""Plotly figures of a trained SAE and a self-contained HTML report (opens offline).

The figures are plain functions returning `plotly.graph_objects.Figure`, so notebooks and
widgets show the same pictures the report does.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from saelab.sae import SAE


@torch.no_grad()
def latent_stats(sae: SAE, x_ND: torch.Tensor, batch_size: int = 4096) -> dict:
    """Per-token L0 `[N]` and per-latent firing frequency `[F]` of `sae` on `x_ND` (numpy)."""
    l0_N, fires_F = [], torch.zeros(sae.cfg.width, dtype=torch.long)
    device = next(sae.parameters()).device
    for start in range(0, len(x_ND), batch_size):
        f_BF = sae.encode(x_ND[start : start + batch_size].to(device))
        active_BF = f_BF > 0
        l0_N.append(active_BF.sum(1).cpu())
        fires_F += active_BF.sum(0).cpu()
    return {"l0_N": torch.cat(l0_N).numpy(), "density_F": (fires_F.double() / len(x_ND)).numpy()}


def training_curves(history: list[dict]) -> go.Figure:
    """FVU, L0 and dead fraction against training tokens."""
    tokens = [h["tokens"] for h in history]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("FVU (batch)", "L0", "dead fraction"))
    for col, key in enumerate(("fvu", "l0", "dead_fraction"), start=1):
        fig.add_trace(go.Scatter(x=tokens, y=[h[key] for h in history], mode="lines", name=key), row=1, col=col)
        fig.update_xaxes(title_text="training tokens", row=1, col=col)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(title="Training curves", showlegend=False, height=340)
    return fig


def l0_histogram(l0_N: np.ndarray) -> go.Figure:
    """How many latents fire per token."""
    fig = go.Figure(go.Histogram(x=l0_N, nbinsx=60))
    fig.update_layout(title=f"L0 per token (mean {l0_N.mean():.1f})", xaxis_title="active latents",
                      yaxis_title="tokens", height=340)
    return fig


def density_histogram(density_F: np.ndarray) -> go.Figure:
    """log10 firing frequency of each latent; dead latents counted in the title."""
    alive = density_F[density_F > 0]
    fig = go.Figure(go.Histogram(x=np.log10(alive), nbinsx=60))
    fig.update_layout(title=f"Feature density ({(density_F == 0).sum()} of {len(density_F)} latents never fire)",
                      xaxis_title="log10 firing frequency", yaxis_title="latents", height=340)
    return fig


def metrics_table(metrics: dict) -> go.Figure:
    keys = list(metrics)
    values = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in metrics.values()]
    fig = go.Figure(go.Table(header={"values": ["metric", "value"]}, cells={"values": [keys, values]}))
    fig.update_layout(title="Held-out metrics", height=60 + 24 * len(keys))
    return fig


def write_report(path: str | Path, title: str, figures: list[go.Figure], notes: str = "") -> Path:
    """One HTML file with plotly.js inlined once, so it opens without a network; written atomically."""
    path = Path(path)
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    body = "\n".join(f"<div class='fig'>{p}</div>" for p in parts)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(notes)}</p>{body}</body></html>")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page)
    os.replace(tmp, path)
    return path
