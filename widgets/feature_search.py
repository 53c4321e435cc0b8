"""Finding a latent in the FeatureExplorer: the search box over top tokens, its matches
dropdown and the "most medical" button (a mixin of `FeatureExplorer`; the ranking rules
live in `saelab.features.search`)."""

from __future__ import annotations

import torch

from saelab.data import vocabulary
from saelab.features import highest_share_latent, search_top_tokens, vocabulary_shares

from . import feature_html as views

MAX_MATCHES = 200  # search results listed in the dropdown (a common piece matches thousands)


class LatentSearch:
    """Search and "most medical" for `FeatureExplorer` (uses its `stats`, `store`,
    `tokenizer`, `n_latents`, `latent_label`, `_top_ids`, `_piece` and controls)."""

    @property
    def vocabulary(self) -> set[str] | None:
        """The medical words for ``most_medical`` (None: ``saelab.data.vocabulary("medical")``);
        setting it clears the cached shares."""
        return self._vocabulary

    @vocabulary.setter
    def vocabulary(self, words: set[str] | None) -> None:
        self._vocabulary = None if words is None else set(words)
        self._medical_shares = None

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

    def _on_search(self, change) -> None:
        query = change["new"]
        with self.matches.hold_trait_notifications():
            self.matches.options = [("— search top tokens —", None)]
            self.matches.value = None
        if not query.strip():
            self.status.value = ""
            return
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
        self.latent.value = best
        self.status.value = views.note_html(note)
