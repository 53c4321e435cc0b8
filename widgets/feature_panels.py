"""The side and prompt panels of a latent: histograms as inline SVG, logits, nearest
features, the selected latent on a typed prompt and the latents ranked on one of its tokens.

Pure functions from `saelab.features` results to HTML strings (styled by
`feature_html.STYLE`). Figures are inline SVG with a `viewBox` and `width: 100%`, so they
fit whatever column holds them, need no plotly.js (the offline export stays small) and
show each bar's range and count on hover. Latent ids a reader can jump to carry
`data-latent`; in the explorer their `onclick` (`PICK_JS`) writes the id into the latent
box of the enclosing explorer, in the export the page's script shows that latent.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import torch

from saelab.features import Histogram, LogitEffects, Neighbour, PromptCodes

from .feature_html import HIGHLIGHT_RGB, fmt, highlight, logits_html, show_piece

WIDTH, HEIGHT, PAD = 360, 150, 28  # SVG user units; the figure scales to its column

#: Sets the enclosing explorer's latent box to this element's `data-latent` (a `change`
#: event is what ipywidgets' text boxes commit on). A no-op outside an explorer.
PICK_JS = (
    "var b=this.closest('.saelab-fe');var i=b&&b.querySelector('.saelab-fe-latent input');"
    "if(i){i.value=this.dataset.latent;i.dispatchEvent(new Event('change',{bubbles:true}));}"
)


def latent_link(latent: int, text: str) -> str:
    """A clickable latent id (`data-latent`)."""
    return (
        f"<span class='fe-latent-link' data-latent='{int(latent)}' "
        f'onclick="{PICK_JS}">{html.escape(text)}</span>'
    )


def bars_svg(hist: Histogram, color: Callable[[float], str], x_label: str) -> str:
    """An SVG bar chart of `hist`: one bar per bin (hover: its range and count), the x axis
    labelled at both ends and the tallest count on the y axis."""
    edges = hist.edges_B1.double().tolist()
    counts = hist.counts_B.tolist()
    top = max(max(counts, default=0), 1)
    span = (edges[-1] - edges[0]) or 1.0
    plot_w, plot_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    bars = []
    for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True):
        x = PAD + (lo - edges[0]) / span * plot_w
        w = max((hi - lo) / span * plot_w - 0.5, 0.5)
        h = n / top * plot_h
        bars.append(
            f"<rect x='{x:.1f}' y='{PAD + plot_h - h:.1f}' width='{w:.1f}' height='{h:.1f}' "
            f"fill='{color((lo + hi) / 2)}'><title>{fmt(lo)} – {fmt(hi)}: {n}</title></rect>"
        )
    base = PAD + plot_h
    axes = (
        f"<line x1='{PAD}' y1='{base}' x2='{WIDTH - PAD}' y2='{base}' stroke='#888'/>"
        f"<text x='{PAD}' y='{base + 12}'>{fmt(edges[0])}</text>"
        f"<text x='{WIDTH - PAD}' y='{base + 12}' text-anchor='end'>{fmt(edges[-1])}</text>"
        f"<text x='{WIDTH / 2}' y='{HEIGHT - 4}' text-anchor='middle'>"
        f"{html.escape(x_label)}</text>"
        f"<text x='{PAD - 3}' y='{PAD + 8}' text-anchor='end'>{top}</text>"
    )
    return (
        f"<svg class='fe-svg' viewBox='0 0 {WIDTH} {HEIGHT}' role='img'>"
        + "".join(bars)
        + axes
        + "</svg>"
    )


def activation_histogram_html(hist: Histogram, density: float, count: int, n_tokens: int) -> str:
    """The histogram of a latent's non-zero codes (`fe-histogram`), density in its title."""
    r, g, b = HIGHLIGHT_RGB
    title = f"activations · density {density:.3%} ({count} of {n_tokens} tokens)"
    return (
        f"<figure class='fe-figure' data-testid='fe-histogram'><figcaption>{title}</figcaption>"
        + bars_svg(hist, lambda _: f"rgb({r},{g},{b})", "code (non-zero)")
        + "</figure>"
    )


def logit_panel_html(effects: LogitEffects, hist: Histogram) -> str:
    """Top and bottom logits and the histogram of the effects over the vocabulary
    (`fe-logits`): suppressing bins red, promoting blue."""
    svg = bars_svg(hist, lambda x: "#2b6cb0" if x >= 0 else "#c53030", "logit effect")
    return (
        "<div data-testid='fe-logits'><figure class='fe-figure'>"
        f"<figcaption>logit effects over the vocabulary</figcaption>{svg}</figure>"
        + logits_html(effects)
        + "</div>"
    )


def neighbours_html(neighbours: Sequence[Neighbour], pickable: str | None = "this SAE") -> str:
    """Nearest decoder rows by cosine (`fe-neighbours`), grouped by SAE; rows of the SAE
    named `pickable` (the one shown) are clickable latent ids."""
    if not neighbours:
        return "<div data-testid='fe-neighbours'><i>no other latents</i></div>"
    rows = []
    for n in neighbours:
        name = latent_link(n.latent, f"#{n.latent}") if n.source == pickable else f"#{n.latent}"
        rows.append(
            f"<tr><td>{html.escape(n.source)}</td><td>{name}</td>"
            f"<td class='fe-value'>{n.cosine:+.3f}</td></tr>"
        )
    return (
        "<table class='fe-logits' data-testid='fe-neighbours'>"
        "<tr><th colspan=3>nearest features (decoder cosine)</th></tr>" + "".join(rows) + "</table>"
    )


def prompt_tokens_html(codes: PromptCodes, latent: int, chosen: int | None = None) -> str:
    """The typed prompt's tokens shaded by the SELECTED latent's code (`fe-prompt-tokens`;
    reference: its largest code on the kept tokens), each code in a `title`; `chosen` (the
    token the rank view is about) is marked `data-chosen`, sinks `data-sink`."""
    if not codes.tokens:
        return "<div data-testid='fe-prompt-tokens'><i>the prompt has no tokens</i></div>"
    acts_T = codes.codes_TF[:, latent]
    kept = acts_T[codes.kept_T]
    reference = float(kept.max()) if len(kept) else 0.0
    spans = []
    rows = zip(codes.tokens, acts_T.tolist(), codes.kept_T.tolist(), strict=True)
    for t, (tok, act, ok) in enumerate(rows):
        marks = (" data-chosen" if t == chosen else "") + ("" if ok else " data-sink")
        tip = f"#{t}: {act:.4g}" + ("" if ok else " (attention sink: unreliable)")
        look = highlight(act, reference) if ok else ""
        spans.append(
            f"<span class='fe-ptok' data-position='{t}'{marks}{look} title='{tip}'>"
            f"{show_piece(tok)}</span>"
        )
    head = f"<div><small>latent #{latent} on the prompt (max {fmt(reference)})</small></div>"
    return f"<div data-testid='fe-prompt-tokens'>{head}<div>{''.join(spans)}</div></div>"


def prompt_rank_html(
    token: str, position: int, ranked: Sequence[tuple[int, float]], label: Callable[[int], str]
) -> str:
    """The latents ranked by their code on one prompt token (`fe-prompt-rank`), each id a
    clickable `data-latent` link."""
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>{latent_link(f, f'#{f}')}</td>"
        f"<td>{html.escape(label(f))}</td><td class='fe-value'>{fmt(v)}</td></tr>"
        for i, (f, v) in enumerate(ranked)
    )
    head = f"latents on token {position} <code>{show_piece(token)}</code>"
    if not ranked:
        return f"<div data-testid='fe-prompt-rank'>{head}: <i>none fires</i></div>"
    return (
        f"<table class='fe-logits' data-testid='fe-prompt-rank'><tr><th colspan=4>{head}</th>"
        f"</tr><tr><th>rank</th><th>id</th><th>latent</th><th>code</th></tr>{rows}</table>"
    )


def strongest_position(codes: PromptCodes) -> int | None:
    """The kept prompt token with the largest code of any latent (the rank view's default)."""
    if not codes.tokens:
        return None
    best_T = codes.codes_TF.max(1).values.masked_fill(~codes.kept_T, float("-inf"))
    return int(torch.argmax(best_T)) if bool(codes.kept_T.any()) else 0
