"""Interactive per-latent explorer of a trained SAE over a harvested activation store.

``FeatureExplorer(sae, model, hookpoint, store)`` is an ``ipywidgets.VBox``: end a notebook
cell with it to pick a latent (by id, previous / next / random, by searching its top tokens,
or with the "most medical" button) and see the panels of sae_vis and Neuronpedia's feature
pages: density and code histogram, top contexts and samples from quantile bins (each
token's code on hover), top and bottom logits with their histogram, and the nearest
features by decoder cosine; a prompt box shades a typed prompt by the selected latent and
ranks the latents on one of its tokens (ids clickable). ``saelab.features.FeatureIndex``
encodes the store once (tqdm bar), so a latent change is a lookup; ``feature_html`` and
``feature_panels`` turn its ``LatentView`` into HTML.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping

import ipywidgets as widgets

from saelab.data import load_prompts, token_str
from saelab.features import (
    FeatureIndex,
    TokenLatents,
    informative_latent,
    prompt_codes,
    rank_latents,
    top_token_ids,
)
from saelab.features.codes import MAX_ENTRIES
from saelab.models import parse_hookpoint
from saelab.sae import check_fits

from . import feature_html as views
from . import feature_panels as panels
from .feature_layout import build_layout, wire_events
from .feature_search import LatentSearch


def _default_prompt() -> str:
    try:
        return load_prompts("medical")[0]["text"]
    except (FileNotFoundError, IndexError, KeyError):
        return "Once upon a time there was a cat"


class FeatureExplorer(LatentSearch, widgets.VBox):
    """Per-latent views of ``sae`` over ``store`` (harvested at ``hookpoint`` of ``model``).

    Arguments: ``store`` an ``ActivationStore`` of the hookpoint (``saelab.harvest``);
    ``top_k`` top contexts per latent (and tokens per logit list); ``window`` neighbours at
    least each side of a context (grown to whole words); ``latent`` the first latent shown
    (default: ``saelab.features.informative_latent``, the most frequent latent firing on
    under 1% of the tokens); ``k`` serve a TopK-family SAE (e.g. HierarchicalTopK) at this
    sparsity; ``neighbour_saes`` name -> SAE searched for nearest features (e.g. a flow's
    layer SAEs; default: this SAE); ``labels`` a mapping or callable latent -> label
    (default: ``sae.latent_label``, which names a residual SAE's block); ``vocabulary`` the
    words of the "most medical" button; ``prompt`` the prompt box's text; ``prompt_top_k``
    latents listed per prompt token; ``progress`` a tqdm bar while indexing; ``max_entries``
    the most non-zero codes the index keeps (beyond it, or at 0, each latent change scans
    the store: exact but slower).

    Attributes: controls ``latent`` (IntText: an id out of range shows an ``fe-error`` and
    keeps the view), ``prev``, ``next``, ``random``, ``search``, ``matches``,
    ``most_medical``, ``prompt``, ``run_prompt``, ``prompt_position`` (the token ranked);
    views ``status``, ``header_html``, ``contexts_html``, ``quantiles_html``, ``histogram``,
    ``logits_html``, ``neighbours_html``, ``prompt_html``, ``prompt_rank_html`` (all
    ipywidgets.HTML); data ``index`` (``FeatureIndex``), ``stats``, ``view`` (the shown
    ``LatentView``), ``contexts``, ``prompt_codes`` and ``prompt_tokens``.
    """

    def __init__(
        self,
        sae,
        model,
        hookpoint: str,
        store,
        top_k: int = 10,
        window: int = 8,
        *,
        latent: int | None = None,
        k: int | None = None,
        neighbour_saes: Mapping[str, object] | None = None,
        labels: Mapping[int, str] | Callable[[int], str] | None = None,
        vocabulary: set[str] | None = None,
        prompt: str | None = None,
        n_bins: int = 30,
        prompt_top_k: int = 10,
        progress: bool = True,
        max_entries: int = MAX_ENTRIES,
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
        self.sae, self.model, self.hookpoint, self.store = sae, model, hookpoint, store
        self.n_latents = int(sae.cfg.width)
        if latent is not None:
            self._check_latent(latent)  # before the store is indexed
        self.encoder = sae if k is None else sae.at_k(k)
        self.index = FeatureIndex(
            self.encoder,
            model,
            store,
            top_k=top_k,
            window=window,
            n_bins=n_bins,
            neighbour_saes={"this SAE": sae, **(neighbour_saes or {})},
            progress=progress,
            decoder=sae,
            max_entries=max_entries,
        )
        self.top_k, self.window, self.n_bins = top_k, window, n_bins
        self.prompt_top_k, self.labels, self.vocabulary = prompt_top_k, labels, vocabulary
        self.tokenizer = model.tokenizer
        self.stats = self.index.stats
        self._top_ids = top_token_ids(self.stats, store)
        self._top_pieces: dict[int, list[str]] = {}  # latent -> its top tokens' strings
        self._piece = functools.cache(functools.partial(token_str, self.tokenizer))
        self._rng = random.Random(0)
        self.view, self.contexts, self.prompt_codes, self.prompt_tokens = None, [], None, []
        start = informative_latent(self.stats) if latent is None else self._check_latent(latent)
        self._shown = start
        children = build_layout(self, start, _default_prompt() if prompt is None else prompt)
        super().__init__(children=children)
        wire_events(self)
        self.refresh()

    # --- public API ----------------------------------------------------------------------------
    def latent_label(self, latent: int) -> str:
        """The label of ``latent``: from ``labels`` if given, else the SAE's own
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

    def show_prompt(self, text: str) -> list[TokenLatents]:
        """Run ``text`` through the model once: shade its tokens by the selected latent
        (``prompt_html``), rank the latents on its strongest token (``prompt_rank_html``) and
        return the ``prompt_top_k`` strongest latents of every token."""
        codes = prompt_codes(self.encoder, self.model, self.hookpoint, text)
        self.prompt_codes = codes
        self.prompt_tokens = [
            TokenLatents(tok, rank_latents(c_F, self.prompt_top_k), bool(kept))
            for tok, c_F, kept in zip(codes.tokens, codes.codes_TF, codes.kept_T, strict=True)
        ]
        options = [(f"{t}: {show!r}", t) for t, show in enumerate(codes.tokens)]
        chosen = panels.strongest_position(codes)
        self.prompt_codes = None  # no redraw while the options change
        self.prompt_position.options = options
        self.prompt_position.value = chosen
        self.prompt_codes = codes
        self._draw_prompt()
        return self.prompt_tokens

    def rank_on_token(self, position: int) -> list[tuple[int, float]]:
        """The ``prompt_top_k`` latents with the largest codes on prompt token ``position``."""
        return rank_latents(self.prompt_codes.codes_TF[position], self.prompt_top_k)

    def refresh(self) -> None:
        """Redraw every view of the current latent (what a latent change runs)."""
        latent = int(self.latent.value)
        self._shown = latent
        self.view = view = self.index.view(latent)
        self.contexts = view.contexts
        stats = self.stats
        self.header_html.value = views.header_html(
            stats, latent, self.latent_label(latent), self.n_latents, self.sae.cfg.neuronpedia_id
        )
        reference = float(stats.max_act_F[latent])
        self.contexts_html.value = views.contexts_html(view.contexts, reference)
        self.quantiles_html.value = views.quantiles_html(view.quantiles, reference)
        self.histogram.value = panels.activation_histogram_html(
            view.histogram,
            float(stats.density_F[latent]),
            int(stats.count_F[latent]),
            stats.n_tokens,
        )
        self.logits_html.value = panels.logit_panel_html(view.effects, view.logit_histogram)
        self.neighbours_html.value = panels.neighbours_html(view.neighbours)
        if self.matches.value is not None and self.matches.value != latent:
            self.matches.value = None  # a match picked earlier no longer describes the view
        self._draw_prompt()

    # --- internals -----------------------------------------------------------------------------
    def _draw_prompt(self) -> None:
        codes = self.prompt_codes
        if codes is None:
            return
        position = self.prompt_position.value
        self.prompt_html.value = panels.prompt_tokens_html(codes, self._shown, position)
        if position is None:
            self.prompt_rank_html.value = panels.prompt_rank_html("", 0, [], self.latent_label)
            return
        self.prompt_rank_html.value = panels.prompt_rank_html(
            codes.tokens[position], position, self.rank_on_token(position), self.latent_label
        )

    def _check_latent(self, latent: int) -> int:
        latent = int(latent)
        if not 0 <= latent < self.n_latents:
            raise ValueError(
                f"latent {latent} out of range: this SAE has latents 0 .. {self.n_latents - 1}"
            )
        return latent

    def _on_latent(self, change) -> None:
        if change["new"] == self._shown:
            return
        try:
            self._check_latent(change["new"])
        except ValueError as err:
            self.status.value = views.note_html(f"{err}; still showing #{self._shown}", error=True)
            self.latent.value = self._shown
            return
        self.status.value = ""
        self.refresh()

    def _step(self, delta: int) -> None:
        self.latent.value = (self._shown + delta) % self.n_latents

    def _on_random(self, _button=None) -> None:
        alive = self.index.alive
        self.latent.value = self._rng.choice(alive) if alive else 0

    def _on_run_prompt(self, _button=None) -> None:
        self.show_prompt(self.prompt.value)
