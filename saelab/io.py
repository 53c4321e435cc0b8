"""Atomic writes: every file or folder saelab writes appears whole or not at all.

A writer fills a temporary sibling (`.name.tmp-<pid>`) and renames it into place, so a
crash or a full disk mid-write leaves the previous version (or nothing) where it was,
never half of a new one. `os.replace` is atomic within one filesystem, and the temporary
sits beside the target, so it is on the same one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _tmp_sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `folder` whole.

    On an exception the temporary folder is removed and `folder` is left as it was.
    """
    folder = Path(folder)
    tmp = _tmp_sibling(folder, "tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        old = _tmp_sibling(folder, "old")
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old)
    else:
        os.replace(tmp, folder)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed onto `path`.

    For writers that want a path (`safetensors.save_file`, `torch.save`, `DataFrame.to_csv`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_table(table, path: str | Path) -> Path:
    """Write a pandas DataFrame as CSV atomically (full float precision)."""
    with atomic_file(path) as tmp:
        table.to_csv(tmp, index=False)
    return Path(path)
