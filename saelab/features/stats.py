"""Per-latent statistics over a store: firing counts, density, mean and max code, top rows.

Everything streams over an `ActivationStore` batch by batch, so no dense `[N, F]` code
matrix is ever held. Shapes in names: N store rows, F latents, K top rows, B batch rows.
A latent fires on a token when its code is non-zero (`saelab.sae.fires`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from saelab.activations import ActivationStore
from saelab.interventions import autocast_off
from saelab.sae import fires


class FeatureStats(NamedTuple):
    """Per-latent statistics over every row of a store (`feature_stats`)."""

    n_tokens: int  # N, rows of the store
    count_F: torch.Tensor  # int64, tokens where the latent fires
    density_F: torch.Tensor  # float64, count_F / N
    mean_act_F: torch.Tensor  # float64, mean code over the tokens where it fires (0 if never)
    max_act_F: torch.Tensor  # float32, largest code (0 if never fires)
    top_values_FK: torch.Tensor  # float32, its K largest codes, descending; 0 past its firings
    top_index_FK: torch.Tensor  # int64, store rows of those codes; -1 past its firings


class Histogram(NamedTuple):
    """Histogram of one latent's non-zero codes (`latent_histogram`)."""

    counts_B: torch.Tensor  # int64, tokens per bin; sums to the latent's firing count
    edges_B1: torch.Tensor  # float32, B + 1 bin edges from its smallest to its largest code


def as_store(store) -> ActivationStore:
    """`store` itself, or a plain `[N, D]` tensor wrapped as one (no token context)."""
    return ActivationStore.from_tensor(store) if isinstance(store, torch.Tensor) else store


def sae_placement(sae) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of `sae`'s parameters, where its inputs are sent. ValueError for an SAE
    without parameters, on "meta" (shapes only: load or materialise its weights first) or
    split over several devices."""
    params = list(sae.parameters())
    if not params:
        raise ValueError(f"{type(sae).__name__} has no parameters: no device or dtype to run on")
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise ValueError(f"the SAE's parameters are on several devices {sorted(map(str, devices))}")
    device = params[0].device
    if device.type == "meta":
        raise ValueError(
            "the SAE is on the meta device (shapes only, no weights): load it or move it with "
            "sae.to_empty(device=...) and load its weights before encoding"
        )
    return device, params[0].dtype


def sae_device(sae) -> torch.device:
    return sae_placement(sae)[0]


@torch.no_grad()
def encode_codes(sae, x_BD: torch.Tensor, latent: int | None = None) -> torch.Tensor:
    """Codes `[B, F]` (or latent `latent`'s `[B]`) of rows `x_BD`, float32 on the CPU. The rows
    go to the SAE's device and dtype and are encoded with autocast off, so a caller's bf16
    autocast block never lowers the codes' precision."""
    device, dtype = sae_placement(sae)
    with autocast_off(device):
        f_BF = sae.encode(x_BD.to(device, dtype))
    return (f_BF if latent is None else f_BF[:, latent]).float().cpu()


def encode_rows(sae, store, rows_N: torch.Tensor) -> torch.Tensor:
    """Codes `[len(rows), F]` of some store rows (float32, on CPU)."""
    return encode_codes(sae, store.get(rows_N))


def _row_batches(store, batch_size: int):
    """(first row, codes input `[B, D]`) over the store in row order."""
    for start in range(0, len(store), batch_size):
        yield start, store.get(torch.arange(start, min(start + batch_size, len(store))))


@torch.no_grad()
def feature_stats(sae, store, top_k: int = 10, batch_size: int = 4096) -> FeatureStats:
    """Density, mean and max code and the top_k activating rows of every latent, in one pass.

    Each batch is encoded densely (`[batch_size, F]`), reduced to sums, counts, maxima and
    its own per-latent top-k, which is merged into the running top-k, so memory is
    O(batch_size * F + F * top_k) whatever the store's size. `store` may be a plain
    `[N, D]` tensor.
    """
    store = as_store(store)
    n_latents = sae.cfg.width
    sae_placement(sae)  # a clear error before the scan
    count_F = torch.zeros(n_latents, dtype=torch.int64)
    sum_F = torch.zeros(n_latents, dtype=torch.float64)
    max_F = torch.zeros(n_latents, dtype=torch.float32)
    top_values_FK = torch.full((n_latents, top_k), float("-inf"))
    top_index_FK = torch.full((n_latents, top_k), -1, dtype=torch.int64)
    for start, x_BD in _row_batches(store, batch_size):
        f_BF = encode_codes(sae, x_BD)
        fired_BF = fires(f_BF)
        count_F += fired_BF.sum(0)
        sum_F += f_BF.sum(0, dtype=torch.float64)
        max_F = torch.maximum(max_F, f_BF.max(0).values)
        # Rows where a latent is silent must never enter its top-k.
        masked_BF = f_BF.masked_fill(~fired_BF, float("-inf"))
        values_KF, idx_KF = masked_BF.topk(min(top_k, len(f_BF)), dim=0)
        all_values = torch.cat([top_values_FK, values_KF.T], dim=1)
        all_index = torch.cat([top_index_FK, idx_KF.T + start], dim=1)
        top_values_FK, pick_FK = all_values.topk(top_k, dim=1)
        top_index_FK = all_index.gather(1, pick_FK)
    empty_FK = torch.isinf(top_values_FK)
    top_values_FK = top_values_FK.masked_fill(empty_FK, 0.0)
    top_index_FK = top_index_FK.masked_fill(empty_FK, -1)
    return stats_from_sums(len(store), count_F, sum_F, max_F, top_values_FK, top_index_FK)


def stats_from_sums(n, count_F, sum_F, max_F, top_values_FK, top_index_FK) -> FeatureStats:
    """`FeatureStats` from per-latent firing counts, code sums and maxima over `n` tokens
    (density and mean derived here once, for the dense scan and the sparse index alike)."""
    mean_F = torch.where(count_F > 0, sum_F / count_F.clamp_min(1), torch.zeros_like(sum_F))
    return FeatureStats(
        n_tokens=n,
        count_F=count_F,
        density_F=count_F.double() / max(n, 1),
        mean_act_F=mean_F,
        max_act_F=max_F,
        top_values_FK=top_values_FK,
        top_index_FK=top_index_FK,
    )


@torch.no_grad()
def latent_histogram(
    sae, store, latent: int, n_bins: int = 30, batch_size: int = 4096
) -> Histogram:
    """Histogram of `latent`'s non-zero codes over the store (one streaming pass).

    Only the latent's non-zero codes are kept (at most its firing count), never `[N, F]`.
    A latent that never fires gives all-zero counts over edges [0, 1]. `store` may be a
    plain `[N, D]` tensor.
    """
    store = as_store(store)
    values = []
    for _, x_BD in _row_batches(store, batch_size):
        f_B = encode_codes(sae, x_BD, latent)
        values.append(f_B[fires(f_B)])
    return histogram_of(torch.cat(values) if values else torch.zeros(0), n_bins)


def histogram_of(values_M: torch.Tensor, n_bins: int = 30) -> Histogram:
    """`n_bins` equal-width bins from the smallest to the largest of a latent's non-zero
    codes `values_M`; no codes give all-zero counts over edges [0, 1]."""
    if len(values_M) == 0:
        return Histogram(torch.zeros(n_bins, dtype=torch.int64), torch.linspace(0, 1, n_bins + 1))
    lo, hi = float(values_M.min()), float(values_M.max())
    if hi <= lo:
        hi = lo + 1e-6
    counts, edges = torch.histogram(values_M.float(), bins=n_bins, range=(lo, hi))
    return Histogram(counts.long(), edges)
