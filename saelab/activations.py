"""Harvest hookpoint activations into an `ActivationStore`, aligned across hookpoints.

One trace per batch reads every requested hookpoint and stops after the deepest
(`interventions.read_hookpoints`). BOS and attention-sink positions (norm > `sink_factor`
x the batch median; in SmolLM2 `resid_post.15` ~0.03% of positions carrying 70-82% of the
variance) are dropped with one keep-mask per token shared by every hookpoint of the
harvest, so the stores of one harvest have identical rows (`context_N`, `position_N`):
row i of `resid_post.11` and of `resid_post.12` is the same token (feature flow needs that).
With `distributed=True` (under torchrun) each rank harvests a contiguous run of whole
batches into one cache (`sharded.py`); the batches, hence the sink medians and the rows,
are the same as in one process.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from saelab.cache import ActivationStore
from saelab.cache_format import (
    cache_dtype,
    check_free_space,
    dtype_name,
    estimate_bytes,
    human_bytes,
)
from saelab.data import pack
from saelab.interventions import read_hookpoints
from saelab.io import atomic_folder
from saelab.manifest import SINK_FACTOR, StoreInfo
from saelab.models import Hookpoint, d_model, model_device, parse_hookpoint
from saelab.process_group import join_process_group

__all__ = ["SINK_FACTOR", "ActivationStore", "StoreInfo", "harvest", "keep_mask"]


def keep_mask(acts_BTD: torch.Tensor, sink_factor: float = SINK_FACTOR) -> torch.Tensor:
    """Bool `[B, T]`: False at BOS (position 0) and at sinks (norm > sink_factor x median).

    The median is over the batch's non-BOS positions; the same rule is used when
    training, when measuring reconstruction and when splicing for CE.
    """
    norms_BT = acts_BTD.float().norm(dim=-1)
    keep_BT = torch.ones_like(norms_BT, dtype=torch.bool)
    keep_BT[:, 0] = False
    if sink_factor and norms_BT.shape[1] > 1:
        median = norms_BT[:, 1:].median()
        keep_BT &= norms_BT <= sink_factor * median
    return keep_BT


@torch.no_grad()
def harvest(
    model,
    hookpoints: str | Hookpoint | list[str],
    texts: list[str] | torch.Tensor,
    max_tokens: int = 200_000,
    ctx_len: int = 128,
    batch_size: int = 16,
    sink_factor: float = SINK_FACTOR,
    cache: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = torch.float32,
    progress: bool = True,
    distributed: bool = False,
    shard_tokens: int = 100_000,
) -> ActivationStore | dict[str, ActivationStore]:
    """Run `model` over `texts` (or pre-packed token ids `[N, T]`) and keep the hookpoints.

    Several hookpoints are read in one pass (the trace stops after the deepest) and share
    one keep-mask: a position is dropped when it is BOS or a sink at any of them. Returns
    one `ActivationStore` for a single hookpoint name, else a dict by name. `max_tokens`
    counts packed tokens (BOS included); the store holds the kept ones, as `dtype`
    ("float32", "float16" or "bfloat16", or the torch dtype; each halves a float32 cache,
    and `get` returns float32). With `cache`, the store is written there (one sub-folder
    per hookpoint, shards of `shard_tokens` rows) and reopened memory-mapped; the estimated
    size is printed to stderr first and a disk with less free space is refused.
    `distributed=True` (under torchrun, `cache` required): each rank harvests its share of
    the contexts and rank 0 writes the one manifest; every rank gets the whole cache, with
    the rows of a one-process harvest in the same order. `device`: where the model runs
    (default: where its weights are).
    """
    single = isinstance(hookpoints, str | Hookpoint)
    parsed = [parse_hookpoint(model, h) for h in ([hookpoints] if single else hookpoints)]
    names = [str(h) for h in parsed]
    dtype = cache_dtype(dtype)
    if distributed and cache is None:
        raise ValueError("a distributed harvest writes one cache: pass cache=<folder>")
    tokens_CT = (
        texts
        if isinstance(texts, torch.Tensor)
        else pack(model.tokenizer, texts, ctx_len, max_tokens)
    )
    tokens_CT = tokens_CT[: -(-max_tokens // tokens_CT.shape[1])] if max_tokens else tokens_CT
    device = torch.device(device) if device is not None else model_device(model)
    rank, world_size = _join(device) if distributed else (0, 1)
    if cache is not None:
        _announce_size(Path(cache), tokens_CT.numel(), names, d_model(model), dtype, rank == 0)
    n_batches = -(-len(tokens_CT) // batch_size)
    first = rank * n_batches // world_size * batch_size
    stop = min((rank + 1) * n_batches // world_size * batch_size, len(tokens_CT))
    acts, ctx_N, pos_N, dropped_sinks = _read(
        model, parsed, tokens_CT, range(first, stop, batch_size), batch_size, sink_factor,
        device, dtype, progress and rank == 0, f" (rank 0's share of {world_size})" * distributed,
    )  # fmt: skip
    model_name = getattr(model, "saelab_name", type(getattr(model, "_module", model)).__name__)
    stores = {}
    for name in names:
        info = StoreInfo(
            model=model_name,
            hookpoint=name,
            d_in=d_model(model),
            n_tokens=len(ctx_N),
            ctx_len=tokens_CT.shape[1],
            n_contexts=len(tokens_CT),
            dropped_bos=stop - first,
            dropped_sinks=dropped_sinks,
            sink_factor=sink_factor,
            dtype=dtype_name(dtype),
        )
        stores[name] = ActivationStore(acts.pop(name), ctx_N, pos_N, tokens_CT.cpu(), info)
    if cache is not None:
        folders = {n: Path(cache) / n if len(names) > 1 else Path(cache) for n in names}
        if distributed:
            from saelab.sharded import write_sharded

            write_sharded(stores, folders, rank, world_size, shard_tokens)
        else:
            with ExitStack() as publish:  # every hookpoint written before any is swapped in
                for name, store in stores.items():
                    tmp = publish.enter_context(atomic_folder(folders[name]))
                    store.write_manifest(tmp, store.write_shards(tmp, 0, len(store), shard_tokens))
        stores = {n: ActivationStore.load(folders[n]) for n in names}
    return stores[names[0]] if single else stores


def _read(
    model, parsed, tokens_CT, starts, batch_size, sink_factor, device, dtype, progress, share
):
    """Activations of the batches at `starts`: `{name: [N, D]}`, context_N, position_N and
    the number of sink positions dropped. `share` ends the progress bar's label."""
    chunks = {str(h): [] for h in parsed}
    contexts, positions, dropped_sinks = [], [], 0
    n_contexts = sum(len(tokens_CT[start : start + batch_size]) for start in starts)
    label = f"harvest {', '.join(chunks)}{share}"
    bar = tqdm(total=n_contexts * tokens_CT.shape[1], desc=label, unit="tok", disable=not progress)
    for start in starts:
        ids_BT = tokens_CT[start : start + batch_size].to(device)
        acts = [a.float().cpu() for a in read_hookpoints(model, parsed, ids_BT)]
        keep_BT = torch.stack([keep_mask(a, sink_factor) for a in acts]).all(0)
        dropped_sinks += int((~keep_BT[:, 1:]).sum())
        ctx_B, pos_T = torch.nonzero(keep_BT, as_tuple=True)
        for name, acts_BTD in zip(chunks, acts, strict=True):
            kept_ND = acts_BTD[keep_BT].to(dtype)
            if dtype == torch.float16 and not torch.isfinite(kept_ND).all():
                raise ValueError(
                    f"{name} has activations beyond float16's range (65504) at kept "
                    "positions: harvest with dtype='bfloat16' (float32's range) instead"
                )
            chunks[name].append(kept_ND)
        contexts.append((ctx_B + start).int())
        positions.append(pos_T.int())
        bar.update(ids_BT.numel())
    bar.close()
    d = d_model(model)
    acts = {n: torch.cat(c) if c else torch.zeros(0, d, dtype=dtype) for n, c in chunks.items()}
    empty = torch.zeros(0, dtype=torch.int32)
    ctx_N = torch.cat(contexts) if contexts else empty
    pos_N = torch.cat(positions) if positions else empty
    return acts, ctx_N, pos_N, dropped_sinks


def _announce_size(folder: Path, n_tokens: int, names, d: int, dtype, loud: bool) -> None:
    """Print the cache's estimated size; refuse a filesystem with less free space."""
    needed = estimate_bytes(n_tokens, len(names), d, dtype)
    free = check_free_space(folder, needed)
    if loud:
        print(
            f"harvest: caching {n_tokens:,} tokens x {len(names)} hookpoints x {d} x "
            f"{dtype_name(dtype)} ~ {human_bytes(needed)} in {folder} ({human_bytes(free)} free)",
            file=sys.stderr,
        )


def _join(device: torch.device) -> tuple[int, int]:
    """(rank, world size) of torchrun's process group, joined here when not yet joined."""
    join_process_group(device)
    return dist.get_rank(), dist.get_world_size()
