"""Atomic writes: every file or folder saelab writes appears whole or not at all.

A writer fills a temporary sibling (`.name.tmp-<pid>`), flushes it to disk (fsync) and
renames it into place, so a crash, a SIGKILL or a full disk mid-write leaves the previous
version (or nothing) where it was, never half of a new one. `os.replace` is atomic within
one filesystem, and the temporary sits beside the target, so it is on the same one. A
folder that already exists is swapped with its replacement in one step
(`renameat2(RENAME_EXCHANGE)` on Linux), so there is no moment without it.

Every byte goes through `_write_all` (one `os.write` loop), including safetensors files
(`write_safetensors` streams the format itself), so a failing disk surfaces in one place
as an `OSError` that names the target. Temporaries of a process that died mid-write are
removed by the next write of the same target.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

CHUNK_BYTES = 64 << 20  # bytes per os.write call: bounded so a slow disk still makes progress
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
# Errors of the disk or the place, not of the caller's data: named after the target.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})
# The safetensors dtype names of the dtypes saelab writes.
SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _tmp_sibling(path: Path, tag: str, pid: int | None = None) -> Path:
    return path.with_name(f".{path.name}.{tag}-{os.getpid() if pid is None else pid}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def clear_stale(path: Path) -> list[Path]:
    """Remove temporaries of `path` left by writers that died (their pid no longer runs)."""
    removed = []
    if not path.parent.is_dir():
        return removed
    for sibling in path.parent.glob(f".{glob.escape(path.name)}.*-*"):
        tag, _, pid = sibling.name[len(path.name) + 2 :].rpartition("-")
        if tag not in ("tmp", "old") or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        try:
            _remove(sibling)
            removed.append(sibling)
        except OSError:  # best effort: a leftover we may not delete must not block the write
            pass
    return removed


def _remove(path: Path) -> None:
    """Delete a file or a folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _fsync_path(path: Path) -> None:
    if os.name != "posix" and path.is_dir():  # folders cannot be opened for fsync there
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (so the rename publishes data on disk)."""
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync_path(Path(root) / name)
        _fsync_path(Path(root))


@cache
def _libc() -> ctypes.CDLL | None:
    return ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    renameat2 = getattr(_libc(), "renameat2", None)  # glibc >= 2.28
    if renameat2 is None:
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _clear_error(err: OSError, target: Path) -> OSError:
    """The same kind of OSError, with a message naming the target and what to do."""
    why = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EACCES: f"{target.parent} is not writable",
        errno.EPERM: f"{target.parent} is not writable",
        errno.EROFS: f"{target.parent} is on a read-only filesystem",
    }.get(err.errno, err.strerror or str(err))
    kept = "the previous version is unchanged" if target.exists() else "nothing was written"
    return type(err)(err.errno, f"cannot write {target}: {why} ({kept})")


@contextmanager
def _named_errors(target: Path, errnos: frozenset[int] | None = None) -> Iterator[None]:
    """Re-raise an OSError (those with an errno in `errnos`, when given) naming `target`."""
    try:
        yield
    except OSError as err:
        if err.errno is None or (errnos is not None and err.errno not in errnos):
            raise
        raise _clear_error(err, target) from err


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `folder` whole.

    On an exception the temporary folder is removed and `folder` is left as it was. An
    `OSError` (read-only place, full disk) names `folder`.
    """
    folder = Path(folder)
    tmp = _tmp_sibling(folder, "tmp")
    with _named_errors(folder):
        clear_stale(folder)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    try:
        with _named_errors(folder, WRITE_ERRNOS):  # a full disk inside names `folder` too
            yield tmp
        with _named_errors(folder):
            _fsync_tree(tmp)
            _publish(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, folder: Path) -> None:
    """Put the finished `tmp` where `folder` is, never leaving `folder` missing or half."""
    if folder.exists() and _exchange(tmp, folder):
        _remove(tmp)  # now the old version
    elif folder.exists():  # no atomic swap here: a short window where `folder` is absent
        old = _tmp_sibling(folder, "old")
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old)
    else:
        os.replace(tmp, folder)
    _fsync_path(folder.parent)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed onto `path`.

    For writers that want a path (`torch.save`, `DataFrame.to_csv`). An `OSError` names `path`.
    """
    path = Path(path)
    tmp = _tmp_sibling(path, "tmp")
    try:
        with _named_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            clear_stale(path)
        yield tmp
        with _named_errors(path):
            _fsync_path(tmp)
            os.replace(tmp, path)
            _fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _write_all(fd: int, data) -> None:
    """Write all of `data` (bytes-like) to `fd`: the one place saelab's bytes reach the disk."""
    view = memoryview(data).cast("B")
    while len(view):
        written = os.write(fd, view[:CHUNK_BYTES])
        view = view[written:]


def write_chunks(path: str | Path, chunks) -> Path:
    """Write the bytes-like `chunks` one after another to `path`, atomically."""
    with atomic_file(path) as tmp:
        with _named_errors(Path(path)):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for chunk in chunks:
                    _write_all(fd, chunk)
            finally:
                os.close(fd)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return write_chunks(path, [data])


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_chunks(path, [text.encode()])


def write_json(path: str | Path, obj) -> Path:
    """Write `obj` as indented JSON to `path` atomically."""
    return write_text(path, json.dumps(obj, indent=2))


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Write `tensors` in the safetensors format, streamed (no second copy in memory).

    Tensors are laid out widest dtype first, then by name, so every tensor starts aligned
    to its element size (the header is padded to 8 bytes), as safetensors itself does.
    """
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    for name, t in flat.items():
        if t.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: cannot write {name} of dtype {t.dtype} as safetensors")
    order = sorted(flat, key=lambda k: (-flat[k].element_size(), k))
    header, offset = {}, 0
    for name in order:
        t = flat[name]
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    chunks = [len(head).to_bytes(8, "little"), head]
    return write_chunks(path, chunks + [_tensor_bytes(flat[name]) for name in order])


def write_table(table, path: str | Path) -> Path:
    """Write a pandas DataFrame as CSV atomically (full float precision)."""
    return write_text(path, table.to_csv(index=False))
