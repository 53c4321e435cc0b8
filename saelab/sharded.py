"""One cache from a harvest sharded over torchrun ranks (`harvest(..., distributed=True)`).

Every rank writes its rows as `rank###_shard_#####.safetensors` plus a small part record
into a staging folder beside the cache; after a collective check that every rank
succeeded, rank 0 moves the shards into a fresh folder, writes the one manifest (rows in
rank order, which is the one-process order) and swaps it in atomically
(`io.atomic_folder`). A kill at any point leaves the previous cache whole; the next
run clears the stale staging folder first.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from saelab.cache import ActivationStore
from saelab.io import atomic_folder, write_text
from saelab.manifest import StoreInfo
from saelab.process_group import all_ranks_succeeded


def staging_folder(folder: Path) -> Path:
    """Where the ranks of a sharded harvest put their shards before rank 0 merges them."""
    return folder.parent / f".{folder.name}.harvest-parts"


def write_sharded(
    stores: dict[str, ActivationStore],
    folders: dict[str, Path],
    rank: int,
    world_size: int,
    shard_tokens: int,
) -> None:
    """Write this rank's `stores` (its share of the rows) and, on rank 0, the merged caches."""
    _check_same_contexts(next(iter(stores.values())).tokens_CT)
    staging = {name: staging_folder(folder) for name, folder in folders.items()}
    if rank == 0:
        for path in staging.values():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
    _all_succeeded(None)  # the staging folders exist (and are empty) before anyone writes

    error = None
    try:
        for name, store in stores.items():
            shards = store.write_shards(
                staging[name], 0, len(store), shard_tokens, prefix=f"rank{rank:03d}_"
            )
            part = {
                "n_tokens": len(store),
                "dropped_bos": store.info.dropped_bos,
                "dropped_sinks": store.info.dropped_sinks,
                "shards": shards,
            }
            write_text(staging[name] / f"part_{rank:03d}.json", json.dumps(part))
    except Exception as err:  # every rank must reach the collective below, then raise
        error = err
    _all_succeeded(error)

    if rank == 0:
        try:
            with ExitStack() as publish:  # every hookpoint merged before any is swapped in
                for name, folder in folders.items():
                    tmp = publish.enter_context(atomic_folder(folder))
                    _merge(stores[name], staging[name], tmp, world_size)
            for path in staging.values():
                shutil.rmtree(path)
        except Exception as err:
            error = err
    _all_succeeded(error)


def _merge(store: ActivationStore, staging: Path, tmp: Path, world_size: int) -> None:
    """Rank 0: the ranks' shards, in rank order, into one cache in the empty folder `tmp`."""
    parts = [json.loads((staging / f"part_{r:03d}.json").read_text()) for r in range(world_size)]
    shards, offset = [], 0
    for part in parts:
        shards += [{**shard, "start": shard["start"] + offset} for shard in part["shards"]]
        offset += part["n_tokens"]
    info = StoreInfo(
        **{
            **asdict(store.info),
            "n_tokens": offset,
            "dropped_bos": sum(p["dropped_bos"] for p in parts),
            "dropped_sinks": sum(p["dropped_sinks"] for p in parts),
        }
    )
    merged = ActivationStore(None, None, None, store.tokens_CT, info)
    for shard in shards:
        os.replace(staging / shard["file"], tmp / shard["file"])
    merged.write_manifest(tmp, shards)


def _check_same_contexts(tokens_CT: torch.Tensor) -> None:
    """Every rank must have packed the same contexts (same texts, max_tokens, ctx_len):
    each harvests its share of them, so differing ones would make an inconsistent cache."""
    weights = torch.arange(1, tokens_CT.numel() + 1).view_as(tokens_CT)
    digest = [tokens_CT.numel(), int((tokens_CT.long() * weights).sum())]  # wraps: a hash
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    low, high = (torch.tensor(digest, device=device) for _ in range(2))
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise ValueError(
            "the ranks of a distributed harvest packed different contexts: give every rank "
            "the same texts, max_tokens and ctx_len (each harvests its own share of them)"
        )


def _all_succeeded(error: BaseException | None) -> None:
    """Every rank learns whether any rank's part of the harvest failed."""
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    all_ranks_succeeded(error, device, "another rank of the sharded harvest failed")
