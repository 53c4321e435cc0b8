"""Samples of a latent across its whole range: equal-count (quantile) bins of its codes.

Top contexts only show a latent at its strongest; most of its firings are weaker and can
mean something else. Like sae_vis's interval samples and Neuronpedia's activation ranges,
`quantile_samples` splits the latent's non-zero codes into `n_bins` bins of equal count
(bin 0 holds its top decile with 10 bins) and draws `per_bin` store rows from each, so a
reader sees the weak tail as often as the peak. Shapes in names: M non-zero codes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from saelab.features.codes import LatentCodes


class QuantileBin(NamedTuple):
    """One equal-count bin of a latent's codes with a few rows drawn from it."""

    lo: float  # smallest code in the bin
    hi: float  # largest code in the bin
    count: int  # firings in the bin
    rows: list[int]  # sampled store rows, largest code first
    values: list[float]  # their codes


def quantile_samples(
    column: LatentCodes, n_bins: int = 10, per_bin: int = 5, seed: int = 0
) -> list[QuantileBin]:
    """`n_bins` equal-count bins of `column`'s codes, strongest bin first, each with up to
    `per_bin` rows drawn without replacement (seeded, so a view is reproducible).

    Fewer firings than bins gives one bin per firing; a latent that never fires, none.
    """
    if n_bins < 1 or per_bin < 1:
        raise ValueError(f"need n_bins >= 1 and per_bin >= 1, got {n_bins} and {per_bin}")
    values_M, rows_M = column.values_M, column.rows_M
    order_M = values_M.argsort(descending=True, stable=True)
    m = len(order_M)
    bounds = torch.linspace(0, m, min(n_bins, m) + 1).round().long().tolist() if m else [0]
    g = torch.Generator().manual_seed(seed)
    out = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        members = order_M[start:stop]
        pick = torch.randperm(len(members), generator=g)[:per_bin].sort().values
        chosen = members[pick]  # sorted positions in a descending list: largest code first
        out.append(
            QuantileBin(
                lo=float(values_M[members[-1]]),
                hi=float(values_M[members[0]]),
                count=len(members),
                rows=rows_M[chosen].tolist(),
                values=values_M[chosen].tolist(),
            )
        )
    return out
