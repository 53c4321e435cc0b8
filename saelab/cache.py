"""`ActivationStore`: harvested activations `[N, D]` in memory or memory-mapped from a cache.

A cache folder holds `manifest.json` (a `StoreInfo`), `tokens.safetensors` (the packed
contexts) and shards with `acts` `[n, D]` (float32, float16 or bfloat16), `context` and
`position` `[n]` int32. `save` writes a whole folder atomically (`io.atomic_folder`): a
crash, a kill or a full disk leaves the previous cache, never half of a new one, and a
read-only folder or a full disk is an `OSError` naming the cache folder. `load`
checks the manifest against every shard header (`manifest.read_manifest`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from saelab.cache_format import (
    CACHE_DTYPES,
    CacheError,
    check_free_space,
    dtype_name,
    estimate_bytes,
    mmap_tensor,
    rows_as_float32,
)
from saelab.io import SAFETENSORS_DTYPES, atomic_folder, write_safetensors, write_text
from saelab.manifest import StoreInfo, read_manifest


class ActivationStore:
    """Activations `[N, D]` of one hookpoint with where each came from.

    `acts_ND` (float32 unless harvested with another `dtype`; `get` always returns float32);
    `context_N`, `position_N` int32 index into `tokens_CT` (the packed contexts), so feature
    views can show a token with its neighbours. `save()` writes safetensors shards plus
    `manifest.json`, and `ActivationStore.load()` memory-maps them.
    """

    def __init__(self, acts_ND, context_N, position_N, tokens_CT, info: StoreInfo, shards=None):
        self.acts_ND = acts_ND
        self.context_N = context_N
        self.position_N = position_N
        self.tokens_CT = tokens_CT
        self.info = info
        self._shards = shards  # list of (start, memmap) when memory-mapped
        if acts_ND is not None:  # any other float dtype is kept in memory, saved as float32
            cached = acts_ND.dtype in CACHE_DTYPES.values()
            self.info.dtype = dtype_name(acts_ND.dtype) if cached else "float32"

    @classmethod
    def from_tensor(
        cls, acts_ND: torch.Tensor, hookpoint: str = "", model: str = ""
    ) -> ActivationStore:
        """A store over plain activations `[N, D]` (no token context: each row is its own
        context of length 1, token id 0). For `train_sae`, `evaluate`-free analyses and tests."""
        if acts_ND.ndim != 2:
            raise ValueError(f"activations must be [N, D], got shape {tuple(acts_ND.shape)}")
        if not torch.isfinite(acts_ND).all():
            raise ValueError("the activations contain NaN or inf")
        n = len(acts_ND)
        info = StoreInfo(
            model=model,
            hookpoint=hookpoint,
            d_in=acts_ND.shape[1],
            n_tokens=n,
            ctx_len=1,
            n_contexts=n,
        )
        return cls(
            acts_ND,
            torch.arange(n, dtype=torch.int32),
            torch.zeros(n, dtype=torch.int32),
            torch.zeros(n, 1, dtype=torch.long),
            info,
        )

    def __len__(self) -> int:
        return self.info.n_tokens

    @property
    def d_in(self) -> int:
        return self.info.d_in

    @property
    def stored_dtype(self) -> torch.dtype:
        """The dtype the activations are kept in (float32, float16 or bfloat16)."""
        return getattr(torch, self.info.dtype)

    def __repr__(self) -> str:
        i = self.info
        return (
            f"ActivationStore({i.model} {i.hookpoint}: {i.n_tokens:,} tokens x {i.d_in} "
            f"{i.dtype}, dropped {i.dropped_bos} BOS + {i.dropped_sinks} sink positions)"
        )

    def get(self, index_N: torch.Tensor) -> torch.Tensor:
        """Rows `index_N` as a float32 tensor `[len(index), D]` (gathered across shards)."""
        if self._shards is None:
            return self.acts_ND[index_N].float()
        out = torch.empty(len(index_N), self.d_in, dtype=torch.float32)
        starts = torch.tensor([s for s, _ in self._shards])
        shard_of = torch.searchsorted(starts, index_N, right=True) - 1
        for k in shard_of.unique().tolist():
            sel = (shard_of == k).nonzero().squeeze(1)
            start, data = self._shards[k]
            out[sel] = rows_as_float32(data[(index_N[sel] - start).numpy()], self.stored_dtype)
        return out

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Up to `n` rows chosen at random (for input scaling and b_dec init)."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[: min(n, len(self))]
        return self.get(idx.sort().values)

    def save(self, folder: str | Path, shard_tokens: int = 100_000) -> Path:
        """Write shards + manifest into `folder` (a temp folder renamed into place).

        A previous cache in `folder` stays whole until the new one is complete. Raises
        `OSError` naming the folder when it is read-only or its disk is (or gets) full.
        """
        folder = Path(folder)
        check_free_space(folder, estimate_bytes(len(self), 1, self.d_in, self.stored_dtype))
        with atomic_folder(folder) as tmp:
            shards = self.write_shards(tmp, 0, len(self), shard_tokens)
            self.write_manifest(tmp, shards)
        return folder

    def write_shards(self, folder: Path, start: int, stop: int, shard_tokens: int, prefix=""):
        """Write rows `start:stop` as shards `{prefix}shard_#####` into `folder`; their list."""
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be a positive number of rows, got {shard_tokens}")
        shards = []
        for k, begin in enumerate(range(start, stop, shard_tokens)):
            idx = torch.arange(begin, min(begin + shard_tokens, stop))
            name = f"{prefix}shard_{k:05d}.safetensors"
            tensors = {
                "acts": self._rows(idx),
                "context": self.context_N[idx].int(),
                "position": self.position_N[idx].int(),
            }
            write_safetensors(folder / name, tensors)
            shards.append({"file": name, "start": int(begin), "n": len(idx)})
        return shards

    def write_manifest(self, folder: Path, shards: list[dict]) -> None:
        """Write `tokens.safetensors` and `manifest.json` listing `shards` (in row order)."""
        n_contexts, ctx_len = self.tokens_CT.shape
        info = StoreInfo(
            **{**asdict(self.info), "shards": shards, "n_contexts": n_contexts, "ctx_len": ctx_len}
        )
        write_safetensors(folder / "tokens.safetensors", {"tokens": self.tokens_CT.long()})
        write_text(folder / "manifest.json", json.dumps(asdict(info), indent=2))

    def _rows(self, index_N: torch.Tensor) -> torch.Tensor:
        """Rows in their stored dtype (what `save` writes)."""
        rows = self.acts_ND[index_N] if self._shards is None else self.get(index_N)
        return rows.to(self.stored_dtype)

    @classmethod
    def load(cls, folder: str | Path) -> ActivationStore:
        """Open a saved store; activations stay on disk (memory-mapped) until gathered.

        Raises `CacheError` (a `ValueError`) naming the file and the problem when the
        manifest is corrupt or disagrees with the shards, `FileNotFoundError` without one.
        """
        folder = Path(folder)
        info = read_manifest(folder)
        stored = SAFETENSORS_DTYPES[CACHE_DTYPES[info.dtype]]
        shards, contexts, positions = [], [], []
        for shard in info.shards:
            path, n = folder / shard["file"], shard["n"]
            shards.append((shard["start"], mmap_tensor(path, "acts", (n, info.d_in), (stored,))))
            contexts.append(
                torch.from_numpy(np.array(mmap_tensor(path, "context", (n,), ("I32",))))
            )
            positions.append(
                torch.from_numpy(np.array(mmap_tensor(path, "position", (n,), ("I32",))))
            )
        shape = (info.n_contexts, info.ctx_len)
        tokens = mmap_tensor(folder / "tokens.safetensors", "tokens", shape, ("I64", "I32"))
        tokens_CT = torch.from_numpy(np.array(tokens)).long()
        context_N = torch.cat(contexts) if contexts else torch.zeros(0, dtype=torch.int32)
        position_N = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.int32)
        bad = (context_N >= info.n_contexts) | (position_N >= info.ctx_len)
        if bool(bad.any()) or bool((context_N < 0).any() | (position_N < 0).any()):
            raise CacheError(f"{folder}: a shard's context/position lies outside the tokens")
        return cls(None, context_N, position_N, tokens_CT, info, shards=shards)
