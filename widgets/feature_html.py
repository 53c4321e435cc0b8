"""Views of one latent for `FeatureExplorer`: pure functions from the core's results
(`saelab.features` NamedTuples) to HTML strings, styled by the classes of `STYLE`, to the
plotly bar of its code histogram, and to the search box's results.

Only a token's highlight is an inline style: its opacity is the latent's code there divided
by a reference maximum, a number per token. Class names (`fe-*`) are what tests and page
CSS select on.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import plotly.graph_objects as go

from saelab.features import (
    Context,
    FeatureStats,
    Histogram,
    LogitEffects,
    TokenLatents,
    matching_pieces,
)

#: RGB of the highlight; its opacity is the code divided by the reference maximum.
HIGHLIGHT_RGB = (255, 140, 0)

#: Every class the views use, once; the explorer shows this block beside them.
STYLE = """<style>
.fe-title { margin: 4px 0; }
.fe-contexts { border-collapse: collapse; }
.fe-contexts th { text-align: left; }
.fe-contexts .fe-value { text-align: right; padding-right: 8px; color: #555; }
.fe-contexts .fe-window { text-align: left; }
.fe-act, .fe-ctx, .fe-piece {
  white-space: pre; font-family: monospace; padding: 0 1px; border-radius: 2px;
}
.fe-act { font-weight: bold; outline: 1px solid #c60; }
.fe-logits .fe-value { color: #555; }
.fe-token {
  display: inline-block; vertical-align: top; margin: 1px; padding: 1px 2px;
  border: 1px solid #ddd;
}
.fe-token[data-sink] { color: #999; }
.fe-token code { white-space: pre; }
.fe-error { color: #b00; }
</style>"""


def show_piece(piece: str) -> str:
    """A token piece for HTML: escaped, newlines and tabs made visible."""
    return html.escape(piece.replace("\n", "⏎").replace("\t", "⇥"))


def fmt(value: float) -> str:
    return f"{value:.3g}"


def highlight(value: float | None, reference: float) -> str:
    """` style='background-color:rgba(...)'` with opacity `value / reference` (clipped to
    [0, 1]), or "" when there is nothing to show."""
    if value is None or reference <= 0:
        return ""
    alpha = max(0.0, min(1.0, float(value) / reference))
    r, g, b = HIGHLIGHT_RGB
    return f" style='background-color:rgba({r},{g},{b},{alpha:.3f});'"


def header_html(stats: FeatureStats, latent: int, label: str, n_latents: int) -> str:
    """Title and density, mean and max code of `latent`."""
    count = int(stats.count_F[latent])
    body = (
        f"density <b>{float(stats.density_F[latent]):.4g}</b> "
        f"({count} of {stats.n_tokens} tokens) · "
        f"mean act <b>{fmt(float(stats.mean_act_F[latent]))}</b> · "
        f"max act <b>{fmt(float(stats.max_act_F[latent]))}</b>"
    )
    if count == 0:
        body += " · <i>dead: never fires on this store</i>"
    return (
        f"<h3 class='fe-title'>{html.escape(label)} <small>(#{latent} of {n_latents})</small>"
        f"</h3><div>{body}</div>"
    )


def contexts_html(contexts: Sequence[Context], reference: float) -> str:
    """A table of top contexts: each window token highlighted by the latent's code there
    (`reference` is full opacity), the activating token as `fe-act`, neighbours `fe-ctx`."""
    if not contexts:
        return "<p><i>no top contexts: this latent never fires on the store</i></p>"
    rows = []
    for ctx in contexts:
        pieces = [*ctx.left, ctx.token, *ctx.right]
        acts = ctx.window_acts if ctx.window_acts is not None else [None] * len(pieces)
        spans = []
        for j, (piece, act) in enumerate(zip(pieces, acts, strict=True)):
            cls = "fe-act" if j == len(ctx.left) else "fe-ctx"
            tip = "not in store" if act is None else f"{act:.4g}"
            spans.append(
                f"<span class='{cls}'{highlight(act, reference)} title='{tip}'>"
                f"{show_piece(piece)}</span>"
            )
        rows.append(
            f"<tr><td class='fe-value'>{fmt(ctx.value)}</td>"
            f"<td class='fe-window'>{''.join(spans)}</td></tr>"
        )
    return (
        "<table class='fe-contexts'><tr><th>act</th><th>top contexts</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def logits_html(effects: LogitEffects) -> str:
    """Two columns: the tokens the latent's direction promotes and those it suppresses."""

    def cells(name: str, value: float) -> str:
        return f"<td class='fe-piece'>{show_piece(name)}</td><td class='fe-value'>{value:+.3g}</td>"

    rows = "".join(
        f"<tr>{cells(p, pv)}{cells(q, qv)}</tr>"
        for p, pv, q, qv in zip(
            effects.promoted,
            effects.promoted_values_K.tolist(),
            effects.suppressed,
            effects.suppressed_values_K.tolist(),
            strict=True,
        )
    )
    return (
        "<table class='fe-logits'><tr><th colspan=2>promoted</th>"
        "<th colspan=2>suppressed</th></tr>" + rows + "</table>"
    )


def prompt_html(tokens: Sequence[TokenLatents], label: Callable[[int], str]) -> str:
    """One `fe-token` box per prompt token listing its strongest latents, highlighted by the
    top code (reference: the largest over kept tokens); sinks are greyed (`data-sink`)."""
    if not tokens:
        return "<p><i>the prompt has no tokens</i></p>"
    reference = max((t.latents[0][1] for t in tokens if t.latents and t.kept), default=0.0)
    spans = []
    for t in tokens:
        top = t.latents[0][1] if t.latents else 0.0
        look = highlight(top, reference) if t.kept else " data-sink"
        listing = "<br>".join(f"{f}: {fmt(v)}" for f, v in t.latents) or "—"
        tip = html.escape(", ".join(f"{label(f)} = {v:.4g}" for f, v in t.latents), quote=True)
        if not t.kept:
            tip = "attention sink (codes unreliable)" + (f"; {tip}" if tip else "")
        spans.append(
            f"<span class='fe-token'{look} title='{tip}'>"
            f"<code>{show_piece(t.token)}</code><br>"
            f"<small class='fe-latents'>{listing}</small></span>"
        )
    return "<div class='fe-prompt'>" + "".join(spans) + "</div>"


def search_results(
    found: Sequence[int],
    query: str,
    top_tokens: Callable[[int], Sequence[str]],
    label: Callable[[int], str],
    limit: int,
) -> tuple[list[tuple[str, int | None]], str]:
    """The matches dropdown's options for the latents `found` by searching `query` (a count
    line, then `label: 'piece', ...` for the first `limit`, listing their top tokens that
    contain it) and the status line."""
    shown = found[:limit]
    options = [(f"— {len(found)} latent(s) match —", None)]
    for f in shown:
        listed = ", ".join(repr(p) for p in matching_pieces(top_tokens(f), query))
        options.append((f"{label(f)}: {listed}", f))
    more = f" (first {len(shown)} listed)" if len(found) > len(shown) else ""
    return options, note_html(f"{len(found)} latent(s) with {query!r} in their top tokens{more}")


def note_html(text: str, error: bool = False) -> str:
    """A status line: italic, or red for an error."""
    if error:
        return f"<span class='fe-error'>{html.escape(text)}</span>"
    return f"<i>{html.escape(text)}</i>"


def histogram_layout() -> go.Layout:
    """A fresh layout for the code histogram (its title is set per latent)."""
    return go.Layout(
        height=260,
        margin={"l": 50, "r": 10, "t": 40, "b": 40},
        bargap=0.02,
        xaxis_title="code (non-zero)",
        yaxis_title="tokens",
    )


def histogram_bar(hist: Histogram) -> go.Bar:
    """One bar per bin of `hist` (a `latent_histogram`), centred in its bin and as wide."""
    edges = hist.edges_B1.double()
    centres = ((edges[1:] + edges[:-1]) / 2).tolist()
    widths = (edges[1:] - edges[:-1]).tolist()
    r, g, b = HIGHLIGHT_RGB
    return go.Bar(
        x=centres,
        y=hist.counts_B.tolist(),
        width=widths,
        marker_color=f"rgb({r},{g},{b})",
        name="tokens",
        hovertemplate="code %{x:.3g}<br>tokens %{y}<extra></extra>",
    )
