"""Finding a latent: the alive ones, those whose top tokens contain a text, the top share.

Pure functions over `feature_stats` results and top-token strings (`top_token_ids` turned
into pieces with `saelab.data.token_str`), so the explorer's search box and "most medical"
button and a notebook pick the same latents. Shapes in names: F latents.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from saelab.features.stats import FeatureStats


def alive_latents(stats: FeatureStats) -> list[int]:
    """The latents that fire on at least one store row, ascending."""
    return (stats.count_F > 0).nonzero().squeeze(1).tolist()


def _needle(query: str) -> str:
    """What a search matches: the query lower-cased, surrounding spaces ignored."""
    return query.strip().lower()


def matching_pieces(pieces: Sequence[str], query: str) -> list[str]:
    """The distinct `pieces` containing `query` (case-insensitive), in first-seen order."""
    needle = _needle(query)
    return list(dict.fromkeys(p for p in pieces if needle in p.lower()))


def search_top_tokens(
    top_pieces: Iterable[Sequence[str]], query: str, max_act_F: torch.Tensor
) -> list[int]:
    """Latents whose top tokens (item f of `top_pieces`: latent f's top-token strings)
    contain `query` (case-insensitive, surrounding spaces ignored): most matching top tokens
    first, then larger max code (`max_act_F`), then lower id. An empty query matches none
    without reading `top_pieces` (it may be a lazy generator)."""
    needle = _needle(query)
    if not needle:
        return []
    hits = []
    for latent, pieces in enumerate(top_pieces):
        n = sum(needle in piece.lower() for piece in pieces)
        if n:
            hits.append((-n, -float(max_act_F[latent]), latent))
    return [latent for *_, latent in sorted(hits)]


def highest_share_latent(shares_F: torch.Tensor, stats: FeatureStats) -> int | None:
    """The alive latent with the largest share (e.g. `vocabulary_shares`; ties: higher
    density, then lower id); None when no latent has a share above 0."""
    alive = alive_latents(stats)
    if not alive or float(shares_F.max()) <= 0:
        return None
    return max(alive, key=lambda f: (float(shares_F[f]), float(stats.density_F[f]), -f))


def informative_latent(stats: FeatureStats, max_density: float = 0.01) -> int:
    """The latent a dashboard opens on: the most frequent one firing on fewer than
    `max_density` of the tokens (a dense latent is rarely interpretable, a rare one has few
    examples); else the least dense alive one; else latent 0. Ties: lower id."""
    alive = alive_latents(stats)
    if not alive:
        return 0
    sparse = [f for f in alive if float(stats.density_F[f]) < max_density]
    if sparse:
        return max(sparse, key=lambda f: (int(stats.count_F[f]), -f))
    return min(alive, key=lambda f: (int(stats.count_F[f]), f))
