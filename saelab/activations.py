"""Harvest hookpoint activations into an `ActivationStore`, aligned across hookpoints.

One trace per batch reads every requested hookpoint and stops after the deepest
(`interventions.read_hookpoints`). BOS and attention-sink positions (norm > `sink_factor`
x the batch median; in SmolLM2 `resid_post.15` ~0.03% of positions carrying 70-82% of the
variance) are dropped with one keep-mask per token shared by every hookpoint of the
harvest, so the stores of one harvest have identical rows (`context_N`, `position_N`):
row i of `resid_post.11` and of `resid_post.12` is the same token (feature flow needs that).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from saelab.data import pack
from saelab.interventions import read_hookpoints
from saelab.io import atomic_folder
from saelab.models import Hookpoint, d_model, model_device, parse_hookpoint

SINK_FACTOR = 10.0
MMAP_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
}  # safetensors dtype -> numpy, for memory-mapped caches


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


@dataclass
class StoreInfo:
    """What a store holds and how it was made; written as the cache manifest."""

    model: str
    hookpoint: str
    d_in: int
    n_tokens: int = 0
    ctx_len: int = 0
    n_contexts: int = 0
    dropped_bos: int = 0
    dropped_sinks: int = 0
    sink_factor: float = SINK_FACTOR
    shards: list[dict] = field(default_factory=list)


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
        self._shards = shards  # list of (start, mmap tensor) when memory-mapped

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

    def __repr__(self) -> str:
        i = self.info
        return (
            f"ActivationStore({i.model} {i.hookpoint}: {i.n_tokens:,} tokens x {i.d_in}, "
            f"dropped {i.dropped_bos} BOS + {i.dropped_sinks} sink positions)"
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
            out[sel] = torch.from_numpy(
                np.ascontiguousarray(data[(index_N[sel] - start).numpy()])
            ).float()
        return out

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Up to `n` rows chosen at random (for input scaling and b_dec init)."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[: min(n, len(self))]
        return self.get(idx.sort().values)

    def save(self, folder: str | Path, shard_tokens: int = 100_000) -> Path:
        """Write shards + manifest into `folder` (a temp folder renamed into place)."""
        folder = Path(folder)
        info = StoreInfo(**{**asdict(self.info), "shards": []})
        with atomic_folder(folder) as tmp:
            for k, start in enumerate(range(0, len(self), shard_tokens)):
                idx = torch.arange(start, min(start + shard_tokens, len(self)))
                name = f"shard_{k:05d}.safetensors"
                save_file(
                    {
                        "acts": self._rows(idx).contiguous(),
                        "context": self.context_N[idx].contiguous(),
                        "position": self.position_N[idx].contiguous(),
                    },
                    tmp / name,
                )
                info.shards.append({"file": name, "start": start, "n": len(idx)})
            save_file({"tokens": self.tokens_CT.contiguous()}, tmp / "tokens.safetensors")
            (tmp / "manifest.json").write_text(json.dumps(asdict(info), indent=2))
        return folder

    def _rows(self, index_N: torch.Tensor) -> torch.Tensor:
        """Rows in their stored dtype (what `save` writes)."""
        if self._shards is None:
            return self.acts_ND[index_N]
        return self.get(index_N)

    @classmethod
    def load(cls, folder: str | Path) -> ActivationStore:
        """Open a saved store; activations stay on disk (memory-mapped) until gathered."""
        folder = Path(folder)
        manifest = folder / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"{folder} has no manifest.json: not an activation cache")
        info = StoreInfo(**json.loads(manifest.read_text()))
        shards, contexts, positions = [], [], []
        for shard in info.shards:
            path = folder / shard["file"]
            shards.append((shard["start"], _mmap_tensor(path, "acts")))
            small = load_file(path)
            contexts.append(small["context"])
            positions.append(small["position"])
        tokens = load_file(folder / "tokens.safetensors")["tokens"]
        return cls(None, torch.cat(contexts), torch.cat(positions), tokens, info, shards=shards)


def _mmap_tensor(path: Path, name: str) -> np.memmap:
    """A read-only numpy memmap over one tensor of a safetensors file (header parsed by hand)."""
    with path.open("rb") as handle:
        n_header = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(n_header))
    meta = header[name]
    if meta["dtype"] not in MMAP_DTYPES:
        raise ValueError(
            f"{path}: activations must be one of {sorted(MMAP_DTYPES)}, found {meta['dtype']}"
        )
    start, _ = meta["data_offsets"]
    return np.memmap(
        path,
        dtype=MMAP_DTYPES[meta["dtype"]],
        mode="r",
        offset=8 + n_header + start,
        shape=tuple(meta["shape"]),
    )


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
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> ActivationStore | dict[str, ActivationStore]:
    """Run `model` over `texts` (or pre-packed token ids `[N, T]`) and keep the hookpoints.

    Several hookpoints are read in one pass (the trace stops after the deepest) and share
    one keep-mask: a position is dropped when it is BOS or a sink at any of them. Returns
    one `ActivationStore` for a single hookpoint name, else a dict by name. `max_tokens`
    counts packed tokens (BOS included); the store holds the kept ones, as `dtype`
    (float32; float16 halves a cache). With `cache`, the store is written there (one
    sub-folder per hookpoint) and reopened memory-mapped. `device`: where the model runs
    (default: where its weights are).
    """
    single = isinstance(hookpoints, str | Hookpoint)
    parsed = [parse_hookpoint(model, h) for h in ([hookpoints] if single else hookpoints)]
    names = [str(h) for h in parsed]
    if dtype not in (torch.float32, torch.float16) and cache is not None:
        raise ValueError(f"a cached store holds float32 or float16 activations, not {dtype}")
    tokens_CT = (
        texts
        if isinstance(texts, torch.Tensor)
        else pack(model.tokenizer, texts, ctx_len, max_tokens)
    )
    tokens_CT = tokens_CT[: -(-max_tokens // tokens_CT.shape[1])] if max_tokens else tokens_CT
    device = torch.device(device) if device is not None else model_device(model)
    chunks = {n: [] for n in names}
    contexts, positions, dropped_sinks = [], [], 0
    bar = tqdm(
        total=tokens_CT.numel(),
        desc=f"harvest {', '.join(names)}",
        unit="tok",
        disable=not progress,
    )
    for start in range(0, len(tokens_CT), batch_size):
        ids_BT = tokens_CT[start : start + batch_size].to(device)
        acts = [a.float().cpu() for a in read_hookpoints(model, parsed, ids_BT)]
        keep_BT = torch.stack([keep_mask(a, sink_factor) for a in acts]).all(0)
        dropped_sinks += int((~keep_BT[:, 1:]).sum())
        ctx_B, pos_T = torch.nonzero(keep_BT, as_tuple=True)
        for name, acts_BTD in zip(names, acts, strict=True):
            chunks[name].append(acts_BTD[keep_BT].to(dtype))
        contexts.append((ctx_B + start).int())
        positions.append(pos_T.int())
        bar.update(ids_BT.numel())
    bar.close()
    model_name = getattr(model, "saelab_name", type(getattr(model, "_module", model)).__name__)
    ctx_N, pos_N = torch.cat(contexts), torch.cat(positions)
    stores = {}
    for name in names:
        info = StoreInfo(
            model=model_name,
            hookpoint=name,
            d_in=d_model(model),
            n_tokens=len(ctx_N),
            ctx_len=tokens_CT.shape[1],
            n_contexts=len(tokens_CT),
            dropped_bos=len(tokens_CT),
            dropped_sinks=dropped_sinks,
            sink_factor=sink_factor,
        )
        store = ActivationStore(torch.cat(chunks.pop(name)), ctx_N, pos_N, tokens_CT.cpu(), info)
        if cache is not None:
            folder = Path(cache) / name if len(names) > 1 else Path(cache)
            store = ActivationStore.load(store.save(folder))
        stores[name] = store
    return stores[names[0]] if single else stores
