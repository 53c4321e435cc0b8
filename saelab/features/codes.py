"""Every non-zero code of an SAE over a store, grouped by latent: the explorer's index.

A dashboard asks, for one latent at a time, where it fires and how strongly (top rows,
quantile-bin samples, the histogram, its code on a context's neighbours). Scanning the
store answers that exactly but encodes every row on each latent change; `sparse_codes`
encodes the store once and keeps only the non-zero codes, latent-major (CSC), so a latent's
column is a slice. `latent_codes` is the plain one-latent scan, kept to check the index
against. Shapes in names: N store rows, F latents, M non-zero codes, Q queried rows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from saelab.features.stats import (
    FeatureStats,
    as_store,
    encode_codes,
    sae_placement,
    stats_from_sums,
)
from saelab.sae import fires

#: Non-zero codes kept at most by default: 2**26 entries are 768 MB (int64 row + float32).
MAX_ENTRIES = 2**26


class LatentCodes(NamedTuple):
    """One latent's non-zero codes over a store, store rows ascending."""

    rows_M: torch.Tensor  # int64 store rows where it fires
    values_M: torch.Tensor  # float32 its codes there (all != 0)


class SparseCodes(NamedTuple):
    """Every non-zero code of an SAE over a store, latent-major (`sparse_codes`)."""

    n_tokens: int  # N, rows of the store
    indptr_F1: torch.Tensor  # int64 [F + 1]: latent f's entries are indptr[f] .. indptr[f+1]
    rows_M: torch.Tensor  # int64 store rows, ascending within a latent
    values_M: torch.Tensor  # float32 codes

    def column(self, latent: int) -> LatentCodes:
        """Latent `latent`'s non-zero codes (views, no copy)."""
        lo, hi = int(self.indptr_F1[latent]), int(self.indptr_F1[latent + 1])
        return LatentCodes(self.rows_M[lo:hi], self.values_M[lo:hi])


def _batches(store, batch_size: int, progress: bool, what: str):
    """(first row, rows `[B, D]`) over the store in row order, with an optional tqdm bar."""
    starts = range(0, len(store), batch_size)
    for start in tqdm(starts, desc=what, unit="batch", disable=not progress):
        yield start, store.get(torch.arange(start, min(start + batch_size, len(store))))


@torch.no_grad()
def sparse_codes(
    sae,
    store,
    max_entries: int = MAX_ENTRIES,
    batch_size: int = 4096,
    progress: bool = False,
) -> SparseCodes | None:
    """Encode `store` once and keep its non-zero codes by latent; None once more than
    `max_entries` codes fire (a dense SAE: use `latent_codes` per latent instead).

    Memory is O(batch_size * F) for the dense batch plus 12 bytes per kept code.
    """
    store = as_store(store)
    sae_placement(sae)  # a clear error before the scan
    rows, latents, values, kept = [], [], [], 0
    for start, x_BD in _batches(store, batch_size, progress, "indexing latents"):
        f_BF = encode_codes(sae, x_BD)
        b_M, f_M = fires(f_BF).nonzero(as_tuple=True)
        kept += len(b_M)
        if kept > max_entries:
            return None
        rows.append(b_M + start)
        latents.append(f_M)
        values.append(f_BF[b_M, f_M])
    n_latents = int(sae.cfg.width)
    latent_M = torch.cat(latents) if latents else torch.zeros(0, dtype=torch.int64)
    order_M = latent_M.argsort(stable=True)  # rows were appended ascending: they stay so
    counts_F = torch.bincount(latent_M, minlength=n_latents)
    indptr_F1 = torch.zeros(n_latents + 1, dtype=torch.int64)
    indptr_F1[1:] = counts_F.cumsum(0)
    rows_M = torch.cat(rows)[order_M] if rows else torch.zeros(0, dtype=torch.int64)
    values_M = torch.cat(values)[order_M] if values else torch.zeros(0)
    return SparseCodes(len(store), indptr_F1, rows_M, values_M)


@torch.no_grad()
def latent_codes(sae, store, latent: int, batch_size: int = 4096) -> LatentCodes:
    """The plain path: one latent's non-zero codes by encoding the whole store."""
    store = as_store(store)
    rows, values = [], []
    for start, x_BD in _batches(store, batch_size, False, ""):
        f_B = encode_codes(sae, x_BD, latent)
        (at,) = fires(f_B).nonzero(as_tuple=True)
        rows.append(at + start)
        values.append(f_B[at])
    return LatentCodes(torch.cat(rows), torch.cat(values))


def codes_at(column: LatentCodes, rows_Q: torch.Tensor) -> torch.Tensor:
    """The latent's code (float32 `[Q]`) on store rows `rows_Q`: 0 where it does not fire."""
    rows_Q = torch.as_tensor(rows_Q, dtype=torch.int64)
    out_Q = torch.zeros(len(rows_Q))
    if len(column.rows_M) == 0 or len(rows_Q) == 0:
        return out_Q
    at_Q = torch.searchsorted(column.rows_M, rows_Q).clamp_max(len(column.rows_M) - 1)
    hit_Q = column.rows_M[at_Q] == rows_Q
    out_Q[hit_Q] = column.values_M[at_Q[hit_Q]]
    return out_Q


def stats_from_codes(codes: SparseCodes, top_k: int = 10) -> FeatureStats:
    """`feature_stats` read off the index instead of a second pass over the store."""
    n_latents = len(codes.indptr_F1) - 1
    count_F = codes.indptr_F1.diff()
    latent_M = torch.repeat_interleave(torch.arange(n_latents), count_F)
    sum_F = torch.zeros(n_latents, dtype=torch.float64).index_add_(
        0, latent_M, codes.values_M.double()
    )
    max_F = torch.zeros(n_latents).scatter_reduce_(0, latent_M, codes.values_M, reduce="amax")
    # Order each latent's entries by code, largest first; the first top_k are its top rows.
    by_value = codes.values_M.argsort(descending=True, stable=True)
    order_M = by_value[latent_M[by_value].argsort(stable=True)]
    rank_M = torch.arange(len(order_M)) - codes.indptr_F1[latent_M]
    keep_M = rank_M < top_k
    top_values_FK = torch.zeros(n_latents, top_k)
    top_index_FK = torch.full((n_latents, top_k), -1, dtype=torch.int64)
    top_values_FK[latent_M[keep_M], rank_M[keep_M]] = codes.values_M[order_M[keep_M]]
    top_index_FK[latent_M[keep_M], rank_M[keep_M]] = codes.rows_M[order_M[keep_M]]
    return stats_from_sums(codes.n_tokens, count_F, sum_F, max_F, top_values_FK, top_index_FK)
