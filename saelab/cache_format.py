"""The activation cache on disk: dtypes, size estimates and memory-mapped safetensors shards.

Shards are written by `io.write_safetensors` (streamed, no second in-memory copy of a
200 MB shard) and read back here as numpy memmaps; bfloat16, which numpy lacks, is mapped
as int16 and viewed as bfloat16 through torch. Every header and manifest field is checked
before use, so a corrupt, truncated or inconsistent cache raises `CacheError` naming the
file and the problem instead of loading wrong rows.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import torch

CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MMAP_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
}
INDEX_BYTES = 8  # context (int32) + position (int32) stored beside each activation row
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit


class CacheError(ValueError):
    """An activation cache on disk is corrupt, truncated or inconsistent."""


def cache_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """`"float16"` / `torch.float16` (also float32, bfloat16) -> the torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in CACHE_DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in CACHE_DTYPES:
        return CACHE_DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"cache dtype must be one of {sorted(CACHE_DTYPES)}, not {dtype!r}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def estimate_bytes(n_tokens: int, n_hookpoints: int, d: int, dtype: torch.dtype) -> int:
    """Bytes a cache of `n_tokens` rows x `n_hookpoints` x `d` values will take (+ indices)."""
    value_bytes = torch.empty((), dtype=dtype).element_size()
    return n_tokens * n_hookpoints * (d * value_bytes + INDEX_BYTES)


def human_bytes(n: float) -> str:
    """`1536` -> "1.5 kB" (decimal units, as `df -H` prints them)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def check_free_space(folder: Path, needed: int) -> int:
    """Free bytes on `folder`'s filesystem; `OSError(ENOSPC)` when fewer than `needed`."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"not enough disk space for the activation cache in {folder}: it needs "
            f"~{human_bytes(needed)}, the filesystem of {existing} has {human_bytes(free)} free",
        )
    return free


def read_header(path: Path) -> tuple[dict, int]:
    """The checked header of a safetensors file and where its data starts."""
    if not path.is_file():
        raise CacheError(f"{path} is missing (the manifest lists it)")
    size = path.stat().st_size
    with path.open("rb") as handle:
        n_header = int.from_bytes(handle.read(8), "little")
        if size < 8 or not 0 < n_header <= min(MAX_HEADER_BYTES, size - 8):
            raise CacheError(f"{path}: not a safetensors file (truncated or corrupt header)")
        try:
            header = json.loads(handle.read(n_header))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CacheError(f"{path}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise CacheError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    for name, meta in header.items():
        _check_tensor_meta(path, name, meta, size - 8 - n_header)
    return header, 8 + n_header


def _check_tensor_meta(path: Path, name: str, meta, data_bytes: int) -> None:
    ok = (
        isinstance(meta, dict)
        and meta.get("dtype") in MMAP_DTYPES
        and _int_list(meta.get("shape"))
        and _int_list(meta.get("data_offsets"))
        and len(meta["data_offsets"]) == 2
    )
    if not ok:
        raise CacheError(f"{path}: tensor {name!r} has a corrupt header entry {meta!r}")
    begin, end = meta["data_offsets"]
    itemsize = np.dtype(MMAP_DTYPES[meta["dtype"]]).itemsize
    if end - begin != int(np.prod(meta["shape"])) * itemsize or end > data_bytes:
        raise CacheError(
            f"{path}: tensor {name!r} of shape {meta['shape']} {meta['dtype']} does not fit "
            f"its bytes {begin}..{end} of {data_bytes} (truncated file?)"
        )


def _int_list(value) -> bool:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def mmap_tensor(path: Path, name: str, shape: tuple, dtypes: tuple[str, ...]) -> np.memmap:
    """A read-only memmap over tensor `name` of `path`, checked to be `shape` in `dtypes`."""
    header, data_start = read_header(path)
    meta = header.get(name)
    if meta is None:
        raise CacheError(f"{path} has no tensor {name!r}")
    if meta["dtype"] not in dtypes or tuple(meta["shape"]) != tuple(shape):
        raise CacheError(
            f"{path}: {name!r} is {meta['dtype']} {meta['shape']}, the manifest says "
            f"{'/'.join(dtypes)} {list(shape)}"
        )
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype=MMAP_DTYPES[meta["dtype"]])
    return np.memmap(
        path,
        dtype=MMAP_DTYPES[meta["dtype"]],
        mode="r",
        offset=data_start + meta["data_offsets"][0],
        shape=tuple(shape),
    )


def rows_as_float32(rows: np.ndarray, stored: torch.dtype) -> torch.Tensor:
    """Rows read from a memmap (bfloat16 arrives as int16) as a float32 tensor."""
    tensor = torch.from_numpy(np.ascontiguousarray(rows))
    if stored == torch.bfloat16:
        tensor = tensor.view(torch.bfloat16)
    return tensor.float()
