"""Interactive per-latent explorer of a trained SAE over a harvested activation store.

``FeatureExplorer(sae, model, hookpoint, store)`` is an ``ipywidgets.VBox``: end a notebook
cell with it to pick a latent (by id, by searching its top-activating tokens, or with the
"most medical" button) and see its header (density, mean and max code), its top contexts
with every window token highlighted by the latent's code there, a plotly histogram of its
non-zero codes and the tokens its decoder direction promotes and suppresses. A prompt box
shows the strongest latents on every token of a free text. Everything comes from
``saelab.features``; ``feature_stats`` runs once at construction, the other views run for the
current latent whenever it changes.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from saelab.data import load_prompts
from saelab.features import (
    feature_stats,
    is_medical_piece,
    latent_histogram,
    latents_on_text,
    logit_effects,
    medical_vocabulary,
    token_str,
    top_contexts,
)
from saelab.models import parse_hookpoint

#: RGB of the highlight; its opacity is the code divided by the reference maximum.
HIGHLIGHT_RGB = (255, 140, 0)

_TOKEN_STYLE = "white-space:pre;font-family:monospace;padding:0 1px;border-radius:2px;"


def _default_prompt() -> str:
    try:
        return load_prompts("medical")[0]["text"]
    except (FileNotFoundError, IndexError, KeyError):
        return "Once upon a time there was a cat"


def _show_piece(piece: str) -> str:
    """A token piece for HTML: escaped, newlines and tabs made visible."""
    return html.escape(piece.replace("\n", "⏎").replace("\t", "⇥"))


def _background(value: float | None, reference: float) -> str:
    if value is None or reference <= 0:
        return ""
    alpha = max(0.0, min(1.0, float(value) / reference))
    r, g, b = HIGHLIGHT_RGB
    return f"background-color:rgba({r},{g},{b},{alpha:.3f});"


def _fmt(value: float) -> str:
    return f"{value:.3g}"


class FeatureExplorer(widgets.VBox):
    """Per-latent views of ``sae`` over ``store`` (harvested at ``hookpoint`` of ``model``).

    Arguments: ``store`` an ``ActivationStore`` of the hookpoint (or ``corpus``, a list of
    texts harvested here with ``max_tokens`` / ``ctx_len``); ``top_k`` top contexts per latent;
    ``window`` neighbours each side of a context; ``latent`` the first latent shown (default:
    the lowest-numbered alive one); ``labels`` a mapping or callable latent -> label used in
    headers (see ``latent_label``); ``vocabulary`` the medical words for the "most medical"
    button (default: ``saelab.features.medical_vocabulary()``, read when first needed);
    ``prompt`` the prompt box's starting text (default: the first medical prompt).

    Attributes: ``latent`` (BoundedIntText), ``search`` (Text), ``matches`` (Dropdown of
    ``(label, latent)``; picking one sets ``latent``), ``most_medical`` (Button), ``status``,
    ``header_html``, ``contexts_html``, ``logits_html``, ``prompt_html`` (ipywidgets.HTML),
    ``histogram`` (plotly FigureWidget), ``prompt`` (Textarea), ``run_prompt`` (Button),
    ``stats`` (the ``FeatureStats``), ``contexts`` (the current latent's ``Context`` list),
    ``prompt_tokens`` (the last ``latents_on_text`` result) and ``widget`` (the explorer).
    """

    def __init__(
        self,
        sae,
        model,
        hookpoint: str,
        store=None,
        top_k: int = 10,
        window: int = 4,
        *,
        corpus: Sequence[str] | None = None,
        max_tokens: int = 8192,
        ctx_len: int = 64,
        latent: int | None = None,
        labels: Mapping[int, str] | Callable[[int], str] | None = None,
        vocabulary: set[str] | None = None,
        prompt: str | None = None,
        n_bins: int = 30,
        prompt_top_n: int = 5,
    ):
        cfg_hookpoint = getattr(sae.cfg, "hookpoint", "") or ""
        if cfg_hookpoint and hookpoint != cfg_hookpoint:
            raise ValueError(f"this SAE was trained on hookpoint {cfg_hookpoint!r}, not {hookpoint!r}")
        parse_hookpoint(model, hookpoint)  # clear error for an unknown hookpoint
        if store is None:
            if corpus is None:
                raise ValueError("pass an ActivationStore (store=) or a list of texts (corpus=)")
            from saelab.activations import harvest

            store = harvest(model, hookpoint, list(corpus), max_tokens=max_tokens, ctx_len=ctx_len, progress=False)
        elif corpus is not None:
            raise ValueError("pass either store= or corpus=, not both")
        store_hookpoint = getattr(getattr(store, "info", None), "hookpoint", "") or ""
        if store_hookpoint and store_hookpoint != hookpoint:
            raise ValueError(f"the store was harvested at {store_hookpoint!r}, not {hookpoint!r}")
        if store.d_in != sae.cfg.d_in:
            raise ValueError(
                f"the store holds d_in={store.d_in} activations but the SAE takes d_in={sae.cfg.d_in}"
            )
        if len(store) == 0:
            raise ValueError("the store is empty")
        if top_k < 1 or window < 0:
            raise ValueError(f"need top_k >= 1 and window >= 0, got top_k={top_k}, window={window}")

        self.sae, self.model, self.hookpoint, self.store = sae, model, hookpoint, store
        self.top_k, self.window, self.n_bins, self.prompt_top_n = top_k, window, n_bins, prompt_top_n
        self.labels = labels
        self._medical_shares: torch.Tensor | None = None
        self.vocabulary = vocabulary
        self.tokenizer = model.tokenizer
        self.n_latents = int(sae.cfg.width)
        self.stats = feature_stats(sae, store, top_k=top_k)
        self._top_ids = self._top_token_ids()
        self._top_pieces = {}  # latent -> list of its top tokens' strings
        self._token_memo: dict[int, str] = {}
        self.contexts = []
        self.prompt_tokens = []

        alive = (self.stats.count_F > 0).nonzero().squeeze(1).tolist()
        first = alive[0] if alive else 0
        start = first if latent is None else self._check_latent(latent)

        self.latent = widgets.BoundedIntText(value=start, min=0, max=self.n_latents - 1,
                                             description="latent", layout={"width": "180px"})
        self.search = widgets.Text(placeholder="token text…", description="search",
                                   continuous_update=False, layout={"width": "260px"})
        self.matches = widgets.Dropdown(options=[("— search top tokens —", None)], value=None,
                                        description="matches", layout={"width": "360px"})
        self.most_medical = widgets.Button(description="most medical", icon="stethoscope",
                                           tooltip="alive latent with the largest share of medical top tokens")
        self.status = widgets.HTML()
        self.header_html = widgets.HTML()
        self.contexts_html = widgets.HTML(layout={"width": "60%"})
        self.histogram = go.FigureWidget(layout=go.Layout(
            height=260, margin={"l": 50, "r": 10, "t": 40, "b": 40}, bargap=0.02,
            xaxis_title="code (non-zero)", yaxis_title="tokens",
        ))
        self.logits_html = widgets.HTML()
        self.prompt = widgets.Textarea(value=_default_prompt() if prompt is None else prompt,
                                       description="prompt", layout={"width": "80%", "height": "60px"})
        self.run_prompt = widgets.Button(description="show latents", icon="play")
        self.prompt_html = widgets.HTML()

        controls = widgets.HBox([self.latent, self.search, self.matches, self.most_medical])
        side = widgets.VBox([self.histogram, self.logits_html], layout={"width": "40%"})
        super().__init__(children=[
            controls, self.status, self.header_html, widgets.HBox([self.contexts_html, side]),
            widgets.HTML("<h4>Latents on a prompt</h4>"), widgets.HBox([self.prompt, self.run_prompt]),
            self.prompt_html,
        ])
        self.latent.observe(self._on_latent, names="value")
        self.search.observe(self._on_search, names="value")
        self.matches.observe(self._on_match, names="value")
        self.most_medical.on_click(self._on_most_medical)
        self.run_prompt.on_click(self._on_run_prompt)
        self.refresh()

    # --- public API ----------------------------------------------------------------------------
    @property
    def widget(self) -> widgets.VBox:
        """The top-level widget (the explorer itself)."""
        return self

    @property
    def vocabulary(self) -> set[str] | None:
        """The medical words for ``most_medical`` (None: ``medical_vocabulary()``); setting it
        clears the cached shares."""
        return self._vocabulary

    @vocabulary.setter
    def vocabulary(self, words: set[str] | None) -> None:
        self._vocabulary = None if words is None else set(words)
        self._medical_shares = None

    def latent_label(self, latent: int) -> str:
        """The label of ``latent`` in headers: from ``labels`` if given, else ``"latent {i}"``.

        For a residual SAE the default names the block: ``"medical latent 12 (#4620)"``
        (latent 12 of the medical residual, id 4620 in the concatenated code). Override (or
        pass ``labels=``) to show automatic interpretations later on.
        """
        latent = int(latent)
        if callable(self.labels):
            return str(self.labels(latent))
        if self.labels is not None and latent in self.labels:
            return str(self.labels[latent])
        if hasattr(self.sae, "block_of"):
            block, local = self.sae.block_of(latent)
            return f"{block} latent {local} (#{latent})"
        return f"latent {latent}"

    def set_latent(self, latent: int) -> None:
        """Show ``latent`` (ValueError outside ``0 .. width - 1``)."""
        self.latent.value = self._check_latent(latent)

    def top_tokens(self, latent: int) -> list[str]:
        """The token strings of ``latent``'s top-activating store rows, strongest first."""
        latent = int(latent)
        if latent not in self._top_pieces:
            self._top_pieces[latent] = [self._piece(i) for i in self._top_ids[latent]]
        return self._top_pieces[latent]

    def search_latents(self, query: str) -> list[int]:
        """Latents whose top tokens contain ``query`` (case-insensitive, surrounding spaces
        ignored), most matching top tokens first, then by max code. Empty query: none."""
        q = query.strip().lower()
        if not q:
            return []
        hits = []
        for latent in range(self.n_latents):
            n = sum(q in piece.lower() for piece in self.top_tokens(latent))
            if n:
                hits.append((-n, -float(self.stats.max_act_F[latent]), latent))
        return [latent for *_, latent in sorted(hits)]

    def medical_shares(self) -> torch.Tensor:
        """Share (float64 ``[F]``) of each latent's top tokens passing ``is_medical_piece``; 0 for
        dead latents. The vocabulary is ``vocabulary`` or ``medical_vocabulary()``."""
        if self._medical_shares is None:
            vocabulary = medical_vocabulary() if self.vocabulary is None else set(self.vocabulary)
            ordered = sorted(vocabulary)
            memo: dict[int, bool] = {}
            shares = torch.zeros(self.n_latents, dtype=torch.float64)
            for latent, ids in enumerate(self._top_ids):
                if not ids:
                    continue
                for i in ids:
                    if i not in memo:
                        memo[i] = is_medical_piece(self.tokenizer.convert_ids_to_tokens(i), vocabulary, ordered)
                shares[latent] = sum(memo[i] for i in ids) / len(ids)
            self._medical_shares = shares
        return self._medical_shares

    def most_medical_latent(self) -> int | None:
        """The alive latent with the largest medical share (ties: higher density); None when no
        latent has any medical top token."""
        shares = self.medical_shares()
        alive = (self.stats.count_F > 0).nonzero().squeeze(1).tolist()
        if not alive or float(shares.max()) <= 0:
            return None
        return max(alive, key=lambda f: (float(shares[f]), float(self.stats.density_F[f]), -f))

    def show_prompt(self, text: str) -> list:
        """Render the ``prompt_top_n`` strongest latents on every token of ``text`` into
        ``prompt_html`` (one ``<span class="fe-token">`` per token) and return them."""
        tokens = latents_on_text(self.sae, self.model, self.hookpoint, text, top_n=self.prompt_top_n)
        self.prompt_tokens = tokens
        self.prompt_html.value = self._prompt_html(tokens)
        return tokens

    def refresh(self) -> None:
        """Redraw every view of the current latent."""
        latent = int(self.latent.value)
        s = self.stats
        self.contexts = top_contexts(s, self.store, self.tokenizer, latent, window=self.window, sae=self.sae)
        self.header_html.value = self._header_html(latent)
        self.contexts_html.value = self._contexts_html(latent)
        self._draw_histogram(latent)
        self.logits_html.value = self._logits_html(latent)

    # --- rendering -----------------------------------------------------------------------------
    def _header_html(self, latent: int) -> str:
        s = self.stats
        count = int(s.count_F[latent])
        title = html.escape(self.latent_label(latent))
        body = (
            f"density <b>{float(s.density_F[latent]):.4g}</b> ({count} of {s.n_tokens} tokens) · "
            f"mean act <b>{_fmt(float(s.mean_act_F[latent]))}</b> · "
            f"max act <b>{_fmt(float(s.max_act_F[latent]))}</b>"
        )
        if count == 0:
            body += " · <i>dead: never fires on this store</i>"
        return f"<h3 style='margin:4px 0'>{title} <small>(#{latent} of {self.n_latents})</small></h3><div>{body}</div>"

    def _contexts_html(self, latent: int) -> str:
        if not self.contexts:
            return "<p><i>no top contexts: this latent never fires on the store</i></p>"
        reference = float(self.stats.max_act_F[latent])
        rows = []
        for ctx in self.contexts:
            pieces = [*ctx.left, ctx.token, *ctx.right]
            acts = ctx.window_acts if ctx.window_acts is not None else [None] * len(pieces)
            spans = []
            for j, (piece, act) in enumerate(zip(pieces, acts, strict=True)):
                centre = j == len(ctx.left)
                style = _TOKEN_STYLE + _background(act, reference)
                if centre:
                    style += "font-weight:bold;outline:1px solid #c60;"
                tip = "not in store" if act is None else f"{act:.4g}"
                cls = "fe-act" if centre else "fe-ctx"
                spans.append(f"<span class='{cls}' style='{style}' title='{tip}'>{_show_piece(piece)}</span>")
            rows.append(
                f"<tr><td style='text-align:right;padding-right:8px;color:#555'>{_fmt(ctx.value)}</td>"
                f"<td style='text-align:left'>{''.join(spans)}</td></tr>"
            )
        return ("<table class='fe-contexts' style='border-collapse:collapse'>"
                "<tr><th>act</th><th style='text-align:left'>top contexts</th></tr>" + "".join(rows) + "</table>")

    def _draw_histogram(self, latent: int) -> None:
        hist = latent_histogram(self.sae, self.store, latent, n_bins=self.n_bins)
        edges = hist.edges_B1.double()
        centres, widths = ((edges[1:] + edges[:-1]) / 2).tolist(), (edges[1:] - edges[:-1]).tolist()
        with self.histogram.batch_update():
            self.histogram.data = ()
            self.histogram.add_trace(go.Bar(x=centres, y=hist.counts_B.tolist(), width=widths,
                                            marker_color="rgb(255,140,0)", name="tokens",
                                            hovertemplate="code %{x:.3g}<br>tokens %{y}<extra></extra>"))
            self.histogram.layout.title.text = f"{self.latent_label(latent)}: non-zero codes"

    def _logits_html(self, latent: int) -> str:
        effects = logit_effects(self.sae, self.model, latent, k=self.top_k)

        def cells(name: str, value: float) -> str:
            return f"<td style='{_TOKEN_STYLE}'>{_show_piece(name)}</td><td style='color:#555'>{value:+.3g}</td>"

        rows = "".join(
            f"<tr>{cells(p, pv)}{cells(q, qv)}</tr>"
            for p, pv, q, qv in zip(effects.promoted, effects.promoted_values_K.tolist(),
                                    effects.suppressed, effects.suppressed_values_K.tolist(), strict=True)
        )
        return ("<table class='fe-logits'><tr><th colspan=2>promoted</th><th colspan=2>suppressed</th></tr>"
                + rows + "</table>")

    def _prompt_html(self, tokens) -> str:
        if not tokens:
            return "<p><i>the prompt has no tokens</i></p>"
        reference = max((t.latents[0][1] for t in tokens if t.latents and t.kept), default=0.0)
        spans = []
        for t in tokens:
            top = t.latents[0][1] if t.latents else 0.0
            style = "display:inline-block;vertical-align:top;margin:1px;padding:1px 2px;border:1px solid #ddd;"
            style += _background(top, reference) if t.kept else "color:#999;"
            listing = "<br>".join(f"{f}: {_fmt(v)}" for f, v in t.latents) or "—"
            tip = html.escape(", ".join(f"{self.latent_label(f)} = {v:.4g}" for f, v in t.latents), quote=True)
            if not t.kept:
                tip = "attention sink (codes unreliable)" + (f"; {tip}" if tip else "")
            spans.append(
                f"<span class='fe-token' style='{style}' title='{tip}'>"
                f"<code style='white-space:pre'>{_show_piece(t.token)}</code><br>"
                f"<small class='fe-latents'>{listing}</small></span>"
            )
        return "<div class='fe-prompt'>" + "".join(spans) + "</div>"

    # --- internals -----------------------------------------------------------------------------
    def _check_latent(self, latent: int) -> int:
        latent = int(latent)
        if not 0 <= latent < self.n_latents:
            raise ValueError(f"latent {latent} out of range: this SAE has latents 0 .. {self.n_latents - 1}")
        return latent

    def _top_token_ids(self) -> list[list[int]]:
        rows_FK = self.stats.top_index_FK
        valid = rows_FK >= 0
        safe = rows_FK.clamp_min(0)
        store = self.store
        ids_FK = store.tokens_CT[store.context_N[safe].long(), store.position_N[safe].long()]
        return [ids[ok].tolist() for ids, ok in zip(ids_FK, valid, strict=True)]

    def _piece(self, token_id: int) -> str:
        if token_id not in self._token_memo:
            self._token_memo[token_id] = token_str(self.tokenizer, token_id)
        return self._token_memo[token_id]

    def _on_latent(self, _change) -> None:
        self.refresh()

    def _on_search(self, change) -> None:
        found = self.search_latents(change["new"])
        shown = found[:200]
        options = [(f"— {len(found)} latent(s) match —", None)]
        for f in shown:
            hits = [p for p in self.top_tokens(f) if change["new"].strip().lower() in p.lower()]
            options.append((f"{self.latent_label(f)}: {', '.join(repr(p) for p in dict.fromkeys(hits))}", f))
        with self.matches.hold_trait_notifications():
            self.matches.options = options
            self.matches.value = None
        more = f" (first {len(shown)} listed)" if len(found) > len(shown) else ""
        self.status.value = f"<i>{len(found)} latent(s) with {html.escape(repr(change['new']))} in their top tokens{more}</i>"

    def _on_match(self, change) -> None:
        if change["new"] is not None:
            self.latent.value = int(change["new"])

    def _on_most_medical(self, _button=None) -> None:
        try:
            best = self.most_medical_latent()
        except FileNotFoundError as err:
            self.status.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            return
        if best is None:
            self.status.value = "<i>no alive latent has a medical top token</i>"
            return
        share = float(self.medical_shares()[best])
        self.status.value = f"<i>most medical: {html.escape(self.latent_label(best))} ({share:.0%} of its top tokens)</i>"
        self.latent.value = best

    def _on_run_prompt(self, _button=None) -> None:
        self.show_prompt(self.prompt.value)
