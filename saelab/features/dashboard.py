"""Everything a feature dashboard shows for one latent, computed from a one-time index.

`FeatureIndex` encodes the store once (`sparse_codes`, with a tqdm bar) and then answers
`view(latent)` from the latent's column of non-zero codes: its histogram, its top contexts
and quantile-bin samples with the code on every window token, its logit effects and logit
histogram, and its nearest decoder rows. The explorer widget and the offline export both
render these `LatentView`s. When the store's non-zero codes exceed `max_entries` (a dense
SAE), each view scans the store for its latent instead (`latent_codes`): exact, slower.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from saelab.features.codes import (
    MAX_ENTRIES,
    LatentCodes,
    latent_codes,
    sparse_codes,
    stats_from_codes,
)
from saelab.features.contexts import Context, column_codes, contexts_at, row_lookup
from saelab.features.geometry import Neighbour, nearest_features
from saelab.features.logits import LogitEffects, logit_effects, logit_histogram, logit_vector
from saelab.features.samples import QuantileBin, quantile_samples
from saelab.features.search import alive_latents
from saelab.features.stats import Histogram, feature_stats, histogram_of


class QuantileContexts(NamedTuple):
    """One quantile bin of a latent's codes and the contexts of its sampled rows."""

    bin: QuantileBin
    contexts: list[Context]


class LatentView(NamedTuple):
    """Every panel's data for one latent (`FeatureIndex.view`)."""

    latent: int
    histogram: Histogram  # of its non-zero codes over the store
    contexts: list[Context]  # top-activating, distinct windows
    quantiles: list[QuantileContexts]  # strongest bin first
    effects: LogitEffects  # promoted / suppressed tokens
    logit_histogram: Histogram  # of its logit effects over the vocabulary
    neighbours: list[Neighbour]  # nearest decoder rows, per SAE of `neighbour_saes`


class FeatureIndex:
    """Per-latent views of `sae` over `store` (activations of `model`), indexed once.

    Options: `top_k` top contexts (and logit tokens) per latent; `window` neighbours at
    least each side of a context (grown to whole words); `n_bins` histogram bins;
    `quantile_bins` x `per_bin` quantile samples; `neighbour_saes` name -> SAE searched for
    nearest features (default: `sae` itself; pass a flow's layer SAEs to search across
    layers); `n_neighbours` per SAE; `max_entries` the index's size limit; `progress` a
    tqdm bar while indexing; `decoder` the SAE whose decoder rows are the latents'
    directions when `sae` is only its encoder (`sae.at_k(k)` of a TopK-family SAE; default
    `sae`). Attributes: `stats` (`FeatureStats`), `codes` (the
    `SparseCodes`, None when over the limit).
    """

    def __init__(
        self,
        sae,
        model,
        store,
        *,
        top_k: int = 10,
        window: int = 8,
        n_bins: int = 30,
        quantile_bins: int = 10,
        per_bin: int = 5,
        neighbour_saes: Mapping[str, object] | None = None,
        n_neighbours: int = 5,
        max_entries: int = MAX_ENTRIES,
        progress: bool = True,
        decoder=None,
    ):
        if top_k < 1 or window < 0:
            raise ValueError(f"need top_k >= 1 and window >= 0, got top_k={top_k}, window={window}")
        self.sae, self.model, self.store = sae, model, store
        self.decoder = sae if decoder is None else decoder
        self.tokenizer = model.tokenizer
        self.top_k, self.window, self.n_bins = top_k, window, n_bins
        self.quantile_bins, self.per_bin = quantile_bins, per_bin
        self.neighbour_saes, self.n_neighbours = neighbour_saes, n_neighbours
        self.codes = sparse_codes(sae, store, max_entries=max_entries, progress=progress)
        if self.codes is None:
            self.stats = feature_stats(sae, store, top_k=top_k)
        else:
            self.stats = stats_from_codes(self.codes, top_k=top_k)
        self._lookup = row_lookup(store)

    @property
    def n_latents(self) -> int:
        return len(self.stats.count_F)

    @property
    def alive(self) -> list[int]:
        """The latents that fire on the store, ascending."""
        return alive_latents(self.stats)

    def column(self, latent: int) -> LatentCodes:
        """`latent`'s non-zero codes: a slice of the index, or a store scan without one."""
        if self.codes is not None:
            return self.codes.column(latent)
        return latent_codes(self.sae, self.store, latent)

    def view(self, latent: int) -> LatentView:
        """Every panel's data for `latent` (ValueError outside `0 .. width - 1`)."""
        latent = int(latent)
        if not 0 <= latent < self.n_latents:
            raise ValueError(
                f"latent {latent} out of range: this SAE has latents 0 .. {self.n_latents - 1}"
            )
        column = self.column(latent)
        codes = column_codes(self._lookup, column)
        descending = column.values_M.argsort(descending=True, stable=True)
        candidates = zip(
            column.rows_M[descending].tolist(), column.values_M[descending].tolist(), strict=True
        )
        top = contexts_at(self.store, self.tokenizer, candidates, self.window, self.top_k, codes)
        quantiles = [
            QuantileContexts(
                b,
                contexts_at(
                    self.store,
                    self.tokenizer,
                    zip(b.rows, b.values, strict=True),
                    self.window,
                    self.per_bin,
                    codes,
                ),
            )
            for b in quantile_samples(column, self.quantile_bins, self.per_bin, seed=latent)
        ]
        logits_V = logit_vector(self.decoder, self.model, latent)
        return LatentView(
            latent=latent,
            histogram=histogram_of(column.values_M, self.n_bins),
            contexts=top,
            quantiles=quantiles,
            effects=logit_effects(self.decoder, self.model, latent, self.top_k, logits_V=logits_V),
            logit_histogram=logit_histogram(logits_V),
            neighbours=nearest_features(
                self.decoder, latent, self.neighbour_saes, top_k=self.n_neighbours
            ),
        )
