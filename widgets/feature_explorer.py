"""Interactive per-latent explorer of a trained SAE over a harvested activation store.

``FeatureExplorer(sae, model, hookpoint, store)`` is an ``ipywidgets.VBox``: end a notebook
cell with it to pick a latent (by id, by searching its top-activating tokens, or with the
"most medical" button) and see its header (density, mean and max code), its top contexts
with every window token highlighted by the latent's code there, a plotly histogram of its
non-zero codes and the tokens its decoder direction promotes and suppresses. A prompt box
shows the strongest latents on every token of a free text. Every number comes from
``saelab.features`` (``feature_stats`` runs once at construction, the other views for the
current latent whenever it changes); ``feature_html`` turns them into HTML.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from saelab.data import load_prompts, token_str, vocabulary
from saelab.features import (
    alive_latents,
    feature_stats,
    highest_share_latent,
    latent_histogram,
    latents_on_text,
    logit_effects,
    search_top_tokens,
    top_contexts,
    top_token_ids,
    vocabulary_shares,
)
from saelab.models import parse_hookpoint
from saelab.sae import check_fits

from . import feature_html as views

MAX_MATCHES = 200  # search results listed in the dropdown (a common piece matches thousands)


def _default_prompt() -> str:
    try:
        return load_prompts("medical")[0]["text"]
    except (FileNotFoundError, IndexError, KeyError):
        return "Once upon a time there was a cat"


class FeatureExplorer(widgets.VBox):
    """Per-latent views of ``sae`` over ``store`` (harvested at ``hookpoint`` of ``model``).

    Arguments: ``store`` an ``ActivationStore`` of the hookpoint (``saelab.harvest``);
    ``top_k`` top contexts per latent (and tokens per logit list); ``window`` neighbours each
    side of a context; ``latent`` the first latent shown (default: the lowest-numbered alive
    one); ``labels`` a mapping or callable latent -> label used in headers (default:
    ``sae.latent_label``); ``vocabulary`` the medical words for the "most medical" button
    (default: ``saelab.data.vocabulary("medical")``, read when first needed); ``prompt`` the
    prompt box's starting text (default: the first medical prompt); ``prompt_top_k`` latents
    listed per prompt token.

    Attributes: ``latent`` (BoundedIntText), ``search`` (Text), ``matches`` (Dropdown of
    ``(label, latent)``; picking one sets ``latent``), ``most_medical`` (Button), ``status``,
    ``header_html``, ``contexts_html``, ``logits_html``, ``prompt_html`` (ipywidgets.HTML),
    ``histogram`` (plotly FigureWidget), ``prompt`` (Textarea), ``run_prompt`` (Button),
    ``stats`` (the ``FeatureStats``), ``contexts`` (the current latent's ``Context`` list) and
    ``prompt_tokens`` (the last ``latents_on_text`` result).
    """

    def __init__(
        self,
        sae,
        model,
        hookpoint: str,
        store,
        top_k: int = 10,
        window: int = 4,
        *,
        latent: int | None = None,
        labels: Mapping[int, str] | Callable[[int], str] | None = None,
        vocabulary: set[str] | None = None,
        prompt: str | None = None,
        n_bins: int = 30,
        prompt_top_k: int = 5,
    ):
        parse_hookpoint(model, hookpoint)  # clear error for an unknown hookpoint
        check_fits(
            sae.cfg, "this SAE", d_in=store.d_in, d_in_of="the store's d_in", hookpoint=hookpoint
        )
        if store.info.hookpoint and store.info.hookpoint != hookpoint:
            raise ValueError(
                f"the store was harvested at {store.info.hookpoint!r}, not {hookpoint!r}"
            )
        if len(store) == 0:
            raise ValueError("the store is empty")
        if top_k < 1 or window < 0:
            raise ValueError(f"need top_k >= 1 and window >= 0, got top_k={top_k}, window={window}")

        self.sae, self.model, self.hookpoint, self.store = sae, model, hookpoint, store
        self.top_k, self.window, self.n_bins = top_k, window, n_bins
        self.prompt_top_k, self.labels, self.vocabulary = prompt_top_k, labels, vocabulary
        self.tokenizer = model.tokenizer
        self.n_latents = int(sae.cfg.width)
        self.stats = feature_stats(sae, store, top_k=top_k)
        self._top_ids = top_token_ids(self.stats, store)
        self._top_pieces: dict[int, list[str]] = {}  # latent -> its top tokens' strings
        self._piece = functools.cache(functools.partial(token_str, self.tokenizer))  # id -> str
        self.contexts = []
        self.prompt_tokens = []

        alive = alive_latents(self.stats)
        first = alive[0] if alive else 0
        start = first if latent is None else self._check_latent(latent)
        self._build(start, _default_prompt() if prompt is None else prompt)
        self.refresh()

    def _build(self, start: int, prompt: str) -> None:
        """Create the controls and views, lay them out and wire their events."""
        self.latent = widgets.BoundedIntText(
            value=start,
            min=0,
            max=self.n_latents - 1,
            description="latent",
            layout={"width": "180px"},
        )
        self.search = widgets.Text(
            placeholder="token text…",
            description="search",
            continuous_update=False,
            layout={"width": "260px"},
        )
        self.matches = widgets.Dropdown(
            options=[("— search top tokens —", None)],
            value=None,
            description="matches",
            layout={"width": "360px"},
        )
        self.most_medical = widgets.Button(
            description="most medical",
            icon="stethoscope",
            tooltip="alive latent with the largest share of medical top tokens",
        )
        self.status = widgets.HTML()
        self.header_html = widgets.HTML()
        self.contexts_html = widgets.HTML(layout={"width": "60%"})
        self.histogram = go.FigureWidget(layout=views.histogram_layout())
        self.logits_html = widgets.HTML()
        self.prompt = widgets.Textarea(
            value=prompt, description="prompt", layout={"width": "80%", "height": "60px"}
        )
        self.run_prompt = widgets.Button(description="show latents", icon="play")
        self.prompt_html = widgets.HTML()

        controls = widgets.HBox([self.latent, self.search, self.matches, self.most_medical])
        side = widgets.VBox([self.histogram, self.logits_html], layout={"width": "40%"})
        super().__init__(
            children=[
                widgets.HTML(views.STYLE),
                controls,
                self.status,
                self.header_html,
                widgets.HBox([self.contexts_html, side]),
                widgets.HTML("<h4>Latents on a prompt</h4>"),
                widgets.HBox([self.prompt, self.run_prompt]),
                self.prompt_html,
            ]
        )
        self.latent.observe(self._on_latent, names="value")
        self.search.observe(self._on_search, names="value")
        self.matches.observe(self._on_match, names="value")
        self.most_medical.on_click(self._on_most_medical)
        self.run_prompt.on_click(self._on_run_prompt)

    # --- public API ----------------------------------------------------------------------------
    @property
    def vocabulary(self) -> set[str] | None:
        """The medical words for ``most_medical`` (None: ``saelab.data.vocabulary("medical")``);
        setting it clears the cached shares."""
        return self._vocabulary

    @vocabulary.setter
    def vocabulary(self, words: set[str] | None) -> None:
        self._vocabulary = None if words is None else set(words)
        self._medical_shares = None

    def latent_label(self, latent: int) -> str:
        """The label of ``latent`` in headers: from ``labels`` if given, else the SAE's own
        (``"latent 12"``, or ``"medical latent 12 (#4620)"`` for a residual SAE)."""
        latent = int(latent)
        if callable(self.labels):
            return str(self.labels(latent))
        if self.labels is not None and latent in self.labels:
            return str(self.labels[latent])
        return self.sae.latent_label(latent)

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
        pieces = (self.top_tokens(f) for f in range(self.n_latents))  # read only if searched
        return search_top_tokens(pieces, query, self.stats.max_act_F)

    def medical_shares(self) -> torch.Tensor:
        """Share (float64 ``[F]``) of each latent's top tokens in the medical vocabulary
        (``saelab.features.vocabulary_shares``); 0 for dead latents."""
        if self._medical_shares is None:
            words = vocabulary("medical") if self.vocabulary is None else self.vocabulary
            self._medical_shares = vocabulary_shares(self.stats, self.store, self.tokenizer, words)
        return self._medical_shares

    def most_medical_latent(self) -> int | None:
        """The alive latent with the largest medical share (ties: higher density); None when no
        latent has any medical top token."""
        return highest_share_latent(self.medical_shares(), self.stats)

    def show_prompt(self, text: str) -> list:
        """Render the ``prompt_top_k`` strongest latents on every token of ``text`` into
        ``prompt_html`` (one ``<span class="fe-token">`` per token) and return them."""
        tokens = latents_on_text(
            self.sae, self.model, self.hookpoint, text, top_k=self.prompt_top_k
        )
        self.prompt_tokens = tokens
        self.prompt_html.value = views.prompt_html(tokens, self.latent_label)
        return tokens

    def refresh(self) -> None:
        """Redraw every view of the current latent."""
        latent = int(self.latent.value)
        self.contexts = top_contexts(
            self.stats, self.store, self.tokenizer, latent, window=self.window, sae=self.sae
        )
        self.header_html.value = views.header_html(
            self.stats, latent, self.latent_label(latent), self.n_latents
        )
        reference = float(self.stats.max_act_F[latent])
        self.contexts_html.value = views.contexts_html(self.contexts, reference)
        self._draw_histogram(latent)
        effects = logit_effects(self.sae, self.model, latent, top_k=self.top_k)
        self.logits_html.value = views.logits_html(effects)

    # --- internals -----------------------------------------------------------------------------
    def _draw_histogram(self, latent: int) -> None:
        hist = latent_histogram(self.sae, self.store, latent, n_bins=self.n_bins)
        with self.histogram.batch_update():
            self.histogram.data = ()
            self.histogram.add_trace(views.histogram_bar(hist))
            self.histogram.layout.title.text = f"{self.latent_label(latent)}: non-zero codes"

    def _check_latent(self, latent: int) -> int:
        latent = int(latent)
        if not 0 <= latent < self.n_latents:
            raise ValueError(
                f"latent {latent} out of range: this SAE has latents 0 .. {self.n_latents - 1}"
            )
        return latent

    def _on_latent(self, _change) -> None:
        self.refresh()

    def _on_search(self, change) -> None:
        query = change["new"]
        found = self.search_latents(query)
        options, note = views.search_results(
            found, query, self.top_tokens, self.latent_label, MAX_MATCHES
        )
        with self.matches.hold_trait_notifications():
            self.matches.options = options
            self.matches.value = None
        self.status.value = note

    def _on_match(self, change) -> None:
        if change["new"] is not None:
            self.latent.value = int(change["new"])

    def _on_most_medical(self, _button=None) -> None:
        try:
            best = self.most_medical_latent()
        except FileNotFoundError as err:
            self.status.value = views.note_html(str(err), error=True)
            return
        if best is None:
            self.status.value = views.note_html("no alive latent has a medical top token")
            return
        share = float(self.medical_shares()[best])
        note = f"most medical: {self.latent_label(best)} ({share:.0%} of its top tokens)"
        self.status.value = views.note_html(note)
        self.latent.value = best

    def _on_run_prompt(self, _button=None) -> None:
        self.show_prompt(self.prompt.value)
