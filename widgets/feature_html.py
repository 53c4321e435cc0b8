"""Views of one latent for `FeatureExplorer` and the offline export: pure functions from the
core's results (`saelab.features` NamedTuples) to HTML strings, styled by `STYLE`.

Only a token's highlight is an inline style: its opacity is the latent's code there divided
by a reference maximum, a number per token. Every token carries its code in a `title`
(shown on hover). Class names (`fe-*`) are what page CSS selects on; each panel's outermost
element carries the UI contract's `data-testid` (docs: notes/UI_CONTRACT.md).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

from saelab.features import Context, FeatureStats, LogitEffects, QuantileContexts, matching_pieces

#: RGB of the highlight; its opacity is the code divided by the reference maximum.
HIGHLIGHT_RGB = (255, 140, 0)

#: Every class the views use, once; the explorer and the export show this block beside them.
#: Tokens have no padding or margin, so the pieces of a word join up ("lactate", not
#: "lact ate"); a token's extent shows on hover.
STYLE = """<style>
.fe-title { margin: 4px 0; }
.fe-grid { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.fe-main { flex: 3 1 420px; min-width: 0; }
.fe-side { flex: 2 1 280px; min-width: 0; }
.fe-contexts { border-collapse: collapse; width: 100%; }
.fe-contexts th { text-align: left; }
.fe-contexts .fe-value { text-align: right; padding-right: 8px; color: #555; vertical-align: top; }
.fe-window { text-align: left; font-family: monospace; white-space: pre-wrap; }
.fe-act, .fe-ctx, .fe-piece { white-space: pre-wrap; font-family: monospace; border-radius: 2px; }
.fe-act { font-weight: bold; text-decoration: underline; }
.fe-act:hover, .fe-ctx:hover, .fe-ptok:hover { outline: 1px solid #999; }
.fe-bin { margin: 6px 0 2px; color: #333; }
.fe-logits .fe-value { color: #555; }
.fe-figure { margin: 4px 0; width: 100%; }
.fe-figure figcaption { font-weight: bold; margin-bottom: 2px; }
.fe-svg { width: 100%; height: auto; display: block; }
.fe-svg text { font: 10px sans-serif; fill: #444; }
.fe-token {
  display: inline-block; vertical-align: top; margin: 1px; padding: 1px 2px;
  border: 1px solid #ddd;
}
.fe-token[data-sink] { color: #999; }
.fe-token code { white-space: pre; }
.fe-ptok { font-family: monospace; white-space: pre-wrap; }
.fe-ptok[data-chosen] { text-decoration: underline; font-weight: bold; }
.fe-latent-link { cursor: pointer; color: #0645ad; text-decoration: underline; }
.fe-error { color: #b00; font-weight: bold; }
</style>"""


def show_piece(piece: str) -> str:
    """A token piece for HTML: escaped, newlines and tabs made visible."""
    return html.escape(piece.replace("\n", "⏎").replace("\t", "⇥"))


def fmt(value: float) -> str:
    return f"{value:.3g}"


def highlight(value: float | None, reference: float) -> str:
    """` style='background-color:rgba(...)'` with opacity `value / reference` (clipped to
    [0, 1]), or "" when there is nothing to show (no code, or 0)."""
    if value is None or reference <= 0 or value <= 0:
        return ""
    alpha = min(1.0, float(value) / reference)
    r, g, b = HIGHLIGHT_RGB
    return f" style='background-color:rgba({r},{g},{b},{alpha:.3f});'"


#: A latent's page on Neuronpedia, from the SAE's `cfg.neuronpedia_id` (e.g.
#: "gemma-2-2b/12-gemmascope-res-16k"), as SAELens releases give it.
NEURONPEDIA_URL = "https://www.neuronpedia.org/{neuronpedia_id}/{latent}"


def header_html(
    stats: FeatureStats, latent: int, label: str, n_latents: int, neuronpedia_id: str = ""
) -> str:
    """Title (`fe-title`, with `#latent`) and density, mean and max code of `latent`; with a
    `neuronpedia_id`, a link to the latent's Neuronpedia page (`fe-neuronpedia`)."""
    count = int(stats.count_F[latent])
    body = (
        f"density <b>{float(stats.density_F[latent]):.4g}</b> "
        f"({count} of {stats.n_tokens} tokens) · "
        f"mean act <b>{fmt(float(stats.mean_act_F[latent]))}</b> · "
        f"max act <b>{fmt(float(stats.max_act_F[latent]))}</b>"
    )
    if count == 0:
        body += " · <i>dead: never fires on this store</i>"
    if neuronpedia_id:
        url = html.escape(NEURONPEDIA_URL.format(neuronpedia_id=neuronpedia_id, latent=latent))
        body += (
            f" · <a href='{url}' target='_blank' rel='noopener' "
            f"data-testid='fe-neuronpedia'>Neuronpedia</a>"
        )
    return (
        f"<h3 class='fe-title' data-testid='fe-title'>{html.escape(label)} "
        f"<small>(#{latent} of {n_latents})</small></h3><div>{body}</div>"
    )


def window_html(ctx: Context, reference: float) -> str:
    """One context's tokens: each highlighted by the latent's code there (`reference` is
    full opacity) with the code in its `title`; the activating token is `fe-act`."""
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
    return "".join(spans)


def context_rows(contexts: Sequence[Context], reference: float) -> str:
    return "".join(
        f"<tr><td class='fe-value'>{fmt(ctx.value)}</td>"
        f"<td class='fe-window'>{window_html(ctx, reference)}</td></tr>"
        for ctx in contexts
    )


def contexts_html(contexts: Sequence[Context], reference: float) -> str:
    """The top contexts table (`fe-top-contexts`)."""
    if not contexts:
        return (
            "<p data-testid='fe-top-contexts'><i>no top contexts: this latent never fires "
            "on the store</i></p>"
        )
    return (
        "<table class='fe-contexts' data-testid='fe-top-contexts'>"
        "<tr><th>act</th><th>top contexts</th></tr>"
        + context_rows(contexts, reference)
        + "</table>"
    )


def quantiles_html(quantiles: Sequence[QuantileContexts], reference: float) -> str:
    """Samples from equal-count bins of the latent's codes (`fe-quantiles`), strongest bin
    first, each headed by its code range and share of the firings."""
    if not quantiles:
        return "<div data-testid='fe-quantiles'><i>no firings to sample</i></div>"
    total = sum(q.bin.count for q in quantiles)
    n = len(quantiles)
    parts = []
    for i, q in enumerate(quantiles):
        b = q.bin
        head = (
            f"quantile {n - i}/{n}: codes {fmt(b.lo)} – {fmt(b.hi)} "
            f"({b.count} firings, {b.count / total:.0%})"
        )
        parts.append(
            f"<tr><th colspan=2 class='fe-bin'>{head}</th></tr>"
            + context_rows(q.contexts, reference)
        )
    return (
        "<table class='fe-contexts' data-testid='fe-quantiles'>"
        "<tr><th colspan=2>samples from quantile bins</th></tr>" + "".join(parts) + "</table>"
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
    """A status line: italic, or red for an error (`fe-error`)."""
    if error:
        return f"<span class='fe-error' data-testid='fe-error'>{html.escape(text)}</span>"
    return f"<i>{html.escape(text)}</i>"
