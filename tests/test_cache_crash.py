"""Crash safety of the activation cache: a SIGKILLed write, a read-only folder, a full disk,
and corrupt manifests / shard headers (hypothesis), each either refused with a clear
`CacheError` or loaded unchanged, never loaded wrong."""

import copy
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import saelab
from saelab.activations import ActivationStore
from saelab.cache_format import CacheError, read_header

WRITER = """
import sys, torch
import saelab
from saelab.activations import ActivationStore
acts = torch.randn(600_000, 64, generator=torch.Generator().manual_seed(1))
ActivationStore.from_tensor(acts).save(sys.argv[1], shard_tokens=2_000)
"""


def _previous(folder: Path) -> torch.Tensor:
    """Write a small previous cache at `folder`; its rows."""
    x = torch.randn(500, 64, generator=torch.Generator().manual_seed(0))
    ActivationStore.from_tensor(x).save(folder, shard_tokens=200)
    return x


def _all_rows(folder: Path) -> torch.Tensor:
    store = ActivationStore.load(folder)
    return store.get(torch.arange(len(store)))


def test_sigkill_during_a_cache_write_keeps_the_previous_cache(tmp_path):
    folder = tmp_path / "acts"
    previous = _previous(folder)
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(WRITER))
    writer = subprocess.Popen([sys.executable, str(script), str(folder)])
    partial = tmp_path / f".acts.tmp-{writer.pid}"
    deadline = time.monotonic() + 120
    while not (partial.exists() and len(list(partial.iterdir())) >= 5):
        assert writer.poll() is None and time.monotonic() < deadline, "the writer never wrote"
        time.sleep(0.002)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    written = len(list(partial.iterdir()))
    assert 5 <= written < 300  # killed mid-write: some of the 300 shards, no manifest
    assert torch.equal(_all_rows(folder), previous)

    subprocess.run([sys.executable, str(script), str(folder)], check=True, timeout=300)
    rerun = ActivationStore.load(folder)
    expected = torch.randn(600_000, 64, generator=torch.Generator().manual_seed(1))
    assert len(rerun) == 600_000 and len(rerun.info.shards) == 300
    idx = torch.tensor([0, 1_999, 2_000, 599_999])
    assert torch.equal(rerun.get(idx), expected[idx])


def _no_leftovers(parent: Path) -> None:
    assert [p.name for p in parent.iterdir() if p.name.startswith(".")] == []


def test_read_only_folder_is_a_clear_error(tmp_path, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    previous = _previous(parent / "acts")
    parent.chmod(0o555)
    if os.geteuid() == 0:  # root writes through permissions: report EROFS as a ro mount does
        real_mkdir = os.mkdir

        def read_only_mkdir(path, *args, **kwargs):
            if Path(path).parent == parent:
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    store = ActivationStore.from_tensor(torch.randn(100, 64))
    try:
        for target in (parent / "acts", parent / "new"):
            kept = "the previous version is unchanged" if target.exists() else "nothing was written"
            why = "(not writable|on a read-only filesystem)"
            with pytest.raises(
                OSError, match=rf"cannot write {target}: {parent} is {why} \({kept}"
            ):
                store.save(target)
    finally:
        parent.chmod(0o755)
    assert sorted(p.name for p in parent.iterdir()) == ["acts"]  # nothing half-written
    assert torch.equal(_all_rows(parent / "acts"), previous)


def test_full_disk_is_a_clear_error_and_leaves_the_previous_cache(tmp_path, monkeypatch):
    folder = tmp_path / "acts"
    previous = _previous(folder)
    real_write, written = os.write, [0]

    def write_until_full(fd, data):
        """The disk fills after 1 MB of cache shards (the lowest-level write saelab uses)."""
        if ".acts.tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
            if written[0] + len(data) > 1_000_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            written[0] += len(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write_until_full)
    match = rf"cannot write {folder}: no space left on the device \(the previous version is unch"
    with pytest.raises(OSError, match=match) as raised:
        ActivationStore.from_tensor(torch.randn(20_000, 64)).save(folder, shard_tokens=1000)
    assert raised.value.errno == errno.ENOSPC and written[0] > 0
    _no_leftovers(tmp_path)
    assert torch.equal(_all_rows(folder), previous)


def test_multi_hookpoint_cache_is_replaced_all_or_nothing(stories, medical_tokens, tmp_path):
    """A full disk while writing the 2nd hookpoint leaves the 1st one's previous cache too:
    the hookpoints of one harvest stay aligned (same tokens per row)."""
    hooks = ["resid_post.1", "resid_post.2"]
    old = saelab.harvest(stories, hooks, medical_tokens[:4], cache=tmp_path / "c", progress=False)
    old_rows = {h: _all_rows(tmp_path / "c" / h) for h in hooks}
    real_write = os.write

    def full_at_second_hookpoint(fd, data):
        if f".{hooks[1]}.tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "write", full_at_second_hookpoint)
        # named after the first hookpoint's folder: the error passes through its writer too
        with pytest.raises(OSError, match=rf"cannot write {tmp_path / 'c'}/resid_post.1: no sp"):
            saelab.harvest(stories, hooks, medical_tokens, cache=tmp_path / "c", progress=False)
    for hook in hooks:
        assert torch.equal(_all_rows(tmp_path / "c" / hook), old_rows[hook])
        assert len(old[hook]) < 4 * 64
        _no_leftovers(tmp_path / "c")


@pytest.fixture(scope="module")
def saved_cache():
    """A 3-shard cache (rows 0..30 of d=4) and its manifest, restored before every example."""
    root = Path(tempfile.mkdtemp())
    x = torch.arange(120, dtype=torch.float32).reshape(30, 4)
    ActivationStore.from_tensor(x, hookpoint="resid_post.1").save(root / "c", shard_tokens=10)
    yield root / "c", json.loads((root / "c" / "manifest.json").read_text()), x
    shutil.rmtree(root)


def _loads_unchanged_or_refused(folder: Path, x: torch.Tensor) -> None:
    """Load `folder`: either a `CacheError` naming a file of it, or exactly the saved rows."""
    try:
        store = ActivationStore.load(folder)
    except CacheError as err:
        assert str(folder) in str(err)
        return
    assert torch.equal(store.get(torch.arange(len(store))), x)
    assert torch.equal(store.context_N, torch.arange(30, dtype=torch.int32))
    assert torch.equal(store.tokens_CT, torch.zeros(30, 1, dtype=torch.long))


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-50, 50) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
FIELDS = ["model", "hookpoint", "d_in", "n_tokens", "ctx_len", "n_contexts", "dtype", "shards"]


@FUZZ
@given(data=st.data())
def test_fuzzed_manifest_fields_are_refused_or_harmless(saved_cache, data):
    folder, manifest, x = saved_cache
    broken = copy.deepcopy(manifest)
    where = data.draw(st.sampled_from(FIELDS + ["shards.file", "shards.start", "shards.n"]))
    target, key = broken, where
    if where.startswith("shards."):
        target, key = broken["shards"][data.draw(st.integers(0, 2))], where[7:]
    if data.draw(st.booleans()):
        target.pop(key)
    else:
        target[key] = data.draw(JSON | st.integers(0, 40))
    (folder / "manifest.json").write_text(json.dumps(broken))
    try:
        _loads_unchanged_or_refused(folder, x)
    finally:
        (folder / "manifest.json").write_text(json.dumps(manifest))


BYTE = st.binary(min_size=1, max_size=1)


@FUZZ
@given(cut=st.integers(0, 10_000), flips=st.lists(st.tuples(st.integers(0, 10_000), BYTE)))
def test_truncated_or_flipped_manifest_bytes_are_refused_or_harmless(saved_cache, cut, flips):
    folder, manifest, x = saved_cache
    good = json.dumps(manifest, indent=2).encode()
    bad = bytearray(good[: cut % len(good)] if not flips else good)
    for at, byte in flips:
        bad[at % len(bad)] = byte[0]
    (folder / "manifest.json").write_bytes(bytes(bad))
    try:
        _loads_unchanged_or_refused(folder, x)
    finally:
        (folder / "manifest.json").write_bytes(good)


@FUZZ
@given(shard=st.integers(0, 2), at=st.integers(0, 10_000), byte=BYTE)
def test_corrupt_shard_headers_are_refused_or_harmless(saved_cache, shard, at, byte):
    folder, _, x = saved_cache
    path = folder / f"shard_{shard:05d}.safetensors"
    good = path.read_bytes()
    _, data_start = read_header(path)
    bad = bytearray(good)
    bad[at % data_start] = byte[0]  # the length prefix or the JSON header
    path.write_bytes(bytes(bad))
    try:
        _loads_unchanged_or_refused(folder, x)
    finally:
        path.write_bytes(good)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(d_in=5), r"'acts' is F32 \[10, 4\], the manifest says F32 \[10, 5\]"),
        (lambda m: m.update(dtype="bfloat16"), r"'acts' is F32 \[10, 4\], the manifest says BF16"),
        (lambda m: m.update(n_tokens=31), "the shards hold 30 rows, n_tokens says 31"),
        (
            lambda m: m["shards"][1].update(n=11),
            r"shards\[2\] covers rows 20..\+10, expected rows from 21",
        ),
        (
            lambda m: m["shards"].reverse(),
            r"shards\[0\] covers rows 20..\+10, expected rows from 0",
        ),
        (lambda m: m["shards"][2].update(file="gone.safetensors"), "gone.safetensors is missing"),
        (lambda m: m["shards"][0].update(file="../x.safetensors"), r"shards\[0\].file' must be"),
        (lambda m: m.update(n_contexts=31), r"'tokens' is I64 \[30, 1\], the manifest says"),
        (lambda m: m.update(extra=1), r"unknown fields \['extra'\]"),
        (lambda m: m.update(d_in=True), "'d_in' must be an integer >= 0, found True"),
    ],
)
def test_inconsistent_manifests_name_the_problem(saved_cache, edit, message):
    folder, manifest, _ = saved_cache
    broken = copy.deepcopy(manifest)
    edit(broken)
    (folder / "manifest.json").write_text(json.dumps(broken))
    try:
        with pytest.raises(CacheError, match=message):
            ActivationStore.load(folder)
    finally:
        (folder / "manifest.json").write_text(json.dumps(manifest))


def test_truncated_shard_is_refused(saved_cache):
    folder, _, _ = saved_cache
    path = folder / "shard_00001.safetensors"
    good = path.read_bytes()
    path.write_bytes(good[:-7])
    try:
        with pytest.raises(
            CacheError, match=r"does not fit its bytes 200..240 of 233 \(truncated file\?\)"
        ):
            ActivationStore.load(folder)
    finally:
        path.write_bytes(good)
