"""An activation cache's `manifest.json` (`StoreInfo`), read and checked before any shard is
opened.

Every field is type-checked and the shard list must tile rows `0..n_tokens` in order with
plain file names inside the folder, so a corrupt, truncated or hand-edited manifest raises
`CacheError` naming the manifest and the field instead of loading rows silently wrong.
The shard headers are then checked against it in `ActivationStore.load`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from saelab.cache_format import CACHE_DTYPES, CacheError

SINK_FACTOR = 10.0


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
    dtype: str = "float32"  # of the stored activations; `get` returns float32 whatever it is
    shards: list[dict] = field(default_factory=list)


_INT_FIELDS = ("d_in", "n_tokens", "ctx_len", "n_contexts", "dropped_bos", "dropped_sinks")


def read_manifest(folder: Path) -> StoreInfo:
    """The checked `StoreInfo` of the cache in `folder`."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no manifest.json: not an activation cache")
    try:
        raw = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CacheError(f"{path}: not valid JSON, truncated or corrupt ({err})") from None
    if not isinstance(raw, dict):
        raise CacheError(f"{path}: must hold a JSON object, found {type(raw).__name__}")
    known = {f.name for f in fields(StoreInfo)}
    if unknown := sorted(set(raw) - known):
        raise CacheError(f"{path}: unknown fields {unknown}")
    raw.setdefault("dtype", "float32")  # caches written before the dtype option
    if missing := sorted({"model", "hookpoint", "d_in", "n_tokens", "shards"} - set(raw)):
        raise CacheError(f"{path}: missing fields {missing}")
    for name in ("model", "hookpoint"):
        _expect(path, name, raw[name], isinstance(raw[name], str), "a string")
    for name in _INT_FIELDS:
        value = raw.get(name, 0)
        _expect(path, name, value, type(value) is int and value >= 0, "an integer >= 0")
    _expect(path, "d_in", raw["d_in"], raw["d_in"] > 0, "a positive integer")
    factor = raw.get("sink_factor", 0.0)
    _expect(
        path, "sink_factor", factor, type(factor) in (int, float) and factor >= 0, "a number >= 0"
    )
    dtype = raw["dtype"]
    _expect(path, "dtype", dtype, isinstance(dtype, str) and dtype in CACHE_DTYPES, "a dtype")
    _check_shards(path, raw["shards"], raw["n_tokens"])
    return StoreInfo(**raw)


def _expect(path: Path, name: str, value, ok: bool, what: str) -> None:
    if not ok:
        raise CacheError(f"{path}: {name!r} must be {what}, found {value!r}")


def _check_shards(path: Path, shards, n_tokens: int) -> None:
    """The shards tile rows 0..n_tokens in order, each a distinct file beside the manifest."""
    _expect(path, "shards", shards, isinstance(shards, list), "a list")
    next_row, names = 0, set()
    for i, shard in enumerate(shards):
        ok = (
            isinstance(shard, dict)
            and set(shard) == {"file", "start", "n"}
            and isinstance(shard["file"], str)
            and type(shard["start"]) is int
            and type(shard["n"]) is int
        )
        _expect(path, f"shards[{i}]", shard, ok, '{"file": name, "start": row, "n": rows}')
        name = shard["file"]
        plain = Path(name).name == name and name.endswith(".safetensors") and name[0] != "."
        _expect(path, f"shards[{i}].file", name, plain and name not in names, "a shard file")
        if shard["start"] != next_row or shard["n"] <= 0:
            raise CacheError(
                f"{path}: shards[{i}] covers rows {shard['start']}..+{shard['n']}, expected "
                f"rows from {next_row} (shards must tile the rows in order)"
            )
        names.add(name)
        next_row += shard["n"]
    if next_row != n_tokens:
        raise CacheError(f"{path}: the shards hold {next_row} rows, n_tokens says {n_tokens}")
