"""Where saelab finds the offline fixtures (`shared/`) and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path | None:
    """`$SAELAB_SHARED`, else `../shared` beside the checkout when it exists, else None."""
    env = os.environ.get("SAELAB_SHARED")
    if env:
        return Path(env).expanduser()
    candidate = REPO_ROOT.parent / "shared"
    return candidate if candidate.is_dir() else None


def cache_dir() -> Path:
    """`$SAELAB_CACHE`, default `~/.cache/saelab`; created on first use."""
    path = Path(os.environ.get("SAELAB_CACHE", Path.home() / ".cache" / "saelab")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """The project's `data/` folder (dataset cards and prompt sets)."""
    return REPO_ROOT / "data"
