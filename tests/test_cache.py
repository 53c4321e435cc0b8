"""The activation cache: a sharded harvest over 2 real gloo ranks equals one process,
float16 / bfloat16 caches and the tolerance of metrics computed from them, and the disk
estimate printed (and enforced) before a harvest."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import saelab
from saelab.activations import ActivationStore
from saelab.cache_format import read_header
from saelab.metrics.reconstruction import reconstruction_metrics
from saelab.sharded import staging_folder

HOOKS = ["resid_post.1", "mlp_out.2"]
# 26 contexts of 64 tokens in batches of 4: 7 batches, the last one short, split 3 + 4
SHARDED = {"max_tokens": 26 * 64, "ctx_len": 64, "batch_size": 4, "sink_factor": 1.5}

RANK_SCRIPT = """
import sys, torch, saelab
torch.set_num_threads(1)
model = saelab.load_model("stories260k", device="cpu")
texts = saelab.load_corpus("medical", split="train", max_texts=400)
stores = saelab.harvest(model, {hooks!r}, texts, cache=sys.argv[1], distributed=True,
                        progress=False, shard_tokens=300, **{kwargs!r})
rank = torch.distributed.get_rank()
open(f"{{sys.argv[2]}}/rows_rank{{rank}}.txt", "w").write(str(len(stores[{hooks!r}[0]])))
"""


@pytest.fixture
def one_thread():
    """One torch thread: bit-identical to the ranks' matmuls, and on a shared, loaded
    machine 2 threads ran this file's training 25x slower (spinning on busy cores)."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)  # conftest's setting


pytestmark = pytest.mark.usefixtures("one_thread")


def test_sharded_harvest_over_two_ranks_equals_one_process(stories, medical_texts, tmp_path):
    cache = tmp_path / "cache"
    (cache / HOOKS[0]).mkdir(parents=True)
    (cache / HOOKS[0] / "old.txt").write_text("a previous cache, replaced whole")
    stale = staging_folder(cache / HOOKS[0])  # left by a killed earlier run: cleared first
    stale.mkdir()
    (stale / "rank001_shard_00009.safetensors").write_bytes(b"junk")
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT.format(hooks=HOOKS, kwargs=SHARDED)))
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + [str(script), str(cache), str(tmp_path)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]

    one = saelab.harvest(stories, HOOKS, medical_texts, progress=False, **SHARDED)
    for name in HOOKS:
        store = ActivationStore.load(cache / name)
        ref = one[name]
        assert torch.equal(store.context_N, ref.context_N)
        assert torch.equal(store.position_N, ref.position_N)
        assert torch.equal(store.get(torch.arange(len(store))), ref.acts_ND)
        assert torch.equal(store.tokens_CT, ref.tokens_CT)
        assert store.info.dropped_sinks == ref.info.dropped_sinks > 0  # sinks: per-batch median
        assert store.info.dropped_bos == 26
        files = [
            s["file"] for s in json.loads((cache / name / "manifest.json").read_text())["shards"]
        ]
        assert {f[:7] for f in files} == {"rank000", "rank001"}  # both ranks wrote rows
        rank1_from = next(s["start"] for s in store.info.shards if s["file"][:7] == "rank001")
        assert store.context_N[rank1_from] == 12 > store.context_N[rank1_from - 1]  # 3 batches
        assert sorted(p.name for p in (cache / name).iterdir()) == sorted(
            [*files, "manifest.json", "tokens.safetensors"]
        )
        assert not staging_folder(cache / name).exists()
    rows = len(one[HOOKS[0]])
    for rank in (0, 1):  # every rank returns the whole cache
        assert (tmp_path / f"rows_rank{rank}.txt").read_text() == str(rows)


def test_distributed_harvest_needs_torchrun_and_a_cache(
    stories, medical_tokens, tmp_path, monkeypatch
):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="pass cache="):
        saelab.harvest(stories, HOOKS[0], ["text"], distributed=True, progress=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        saelab.harvest(
            stories,
            HOOKS[0],
            medical_tokens,
            cache=tmp_path / "c",
            distributed=True,
            progress=False,
        )


def test_ranks_with_different_texts_are_refused(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(
        textwrap.dedent(RANK_SCRIPT.format(hooks=HOOKS, kwargs=SHARDED)).replace(
            "max_texts=400)", "max_texts=400)[int(__import__('os').environ['RANK']):]"
        )
    )
    (tmp_path / "cache").mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + [str(script), str(tmp_path / "cache"), str(tmp_path)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode != 0
    assert run.stderr.count("the ranks of a distributed harvest packed different contexts") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "rank.py"]  # nothing written


@pytest.mark.parametrize(
    ("dtype", "safetensors_dtype"),
    [("float16", "F16"), (torch.float16, "F16"), ("bfloat16", "BF16"), (torch.bfloat16, "BF16")],
)
def test_half_caches_round_float32_and_halve_the_bytes(
    stories, medical_store, tmp_path, dtype, safetensors_dtype
):
    full = saelab.harvest(
        stories, "resid_post.2", medical_store.tokens_CT,
        max_tokens=0, cache=tmp_path / "f32", progress=False,
    )  # fmt: skip
    half = saelab.harvest(
        stories, "resid_post.2", medical_store.tokens_CT,
        max_tokens=0, cache=tmp_path / "half", dtype=dtype, progress=False,
    )  # fmt: skip
    header, _ = read_header(tmp_path / "half" / "shard_00000.safetensors")
    assert header["acts"]["dtype"] == safetensors_dtype
    assert half.info.dtype == str(half.stored_dtype).removeprefix("torch.")
    assert isinstance(half._shards[0][1], np.memmap)  # memory-mapped, not loaded
    x = full.get(torch.arange(len(full)))
    x_half = half.get(torch.arange(len(half)))
    assert x_half.dtype == torch.float32
    assert torch.equal(x_half, x.to(half.stored_dtype).float())  # exactly float32, rounded
    assert not torch.equal(x_half, x)
    f32_bytes = (tmp_path / "f32" / "shard_00000.safetensors").stat().st_size
    half_bytes = (tmp_path / "half" / "shard_00000.safetensors").stat().st_size
    # 64 values x 4 bytes + 8 index bytes per row -> 64 x 2 + 8: 264 -> 136
    assert half_bytes / f32_bytes == pytest.approx(136 / 264, abs=0.01)


def test_bad_cache_dtype(medical_store):
    with pytest.raises(ValueError, match="cache dtype must be one of"):
        saelab.harvest(saelab.load_model("stories260k"), "resid_post.2", ["x"], dtype="int8")


def _metrics(sae, x_ND):
    with torch.no_grad():
        out = sae(x_ND)
    return reconstruction_metrics(x_ND, out.x_hat, out.f)


def test_metrics_from_half_caches_agree_with_float32(stories, tmp_path):
    """Measured (32k tokens, topk width 256 k 8, 200k training tokens): a float32-trained SAE
    evaluated on the half caches moves explained variance by 6.7e-6 (float16) and 1.1e-5
    (bfloat16), L0 by 0; trained on them, by 7.5e-6 and 2.1e-4. Tolerances: 1e-4 and 1e-3."""
    texts = saelab.load_corpus("medical", split="train", max_texts=2000)
    common = {"max_tokens": 16384, "ctx_len": 64, "progress": False}
    stores = {
        dtype: saelab.harvest(stories, "resid_post.2", texts, cache=tmp_path / dtype, **common)
        if dtype == "float32"
        else saelab.harvest(
            stories, "resid_post.2", texts, cache=tmp_path / dtype, dtype=dtype, **common
        )
        for dtype in ("float32", "float16", "bfloat16")
    }
    x_ND = stores["float32"].get(torch.arange(len(stores["float32"])))
    train = {"kind": "topk", "width": 256, "k": 8, "progress": False, "max_tokens": 100_000}
    sae = saelab.train_sae(stores["float32"], **train)
    base = _metrics(sae, x_ND)
    assert base["explained_variance"] > 0.6  # a working SAE, not noise
    for dtype in ("float16", "bfloat16"):
        x_half = stores[dtype].get(torch.arange(len(x_ND)))
        on_half = _metrics(sae, x_half)
        assert abs(on_half["explained_variance"] - base["explained_variance"]) < 1e-4, dtype
        assert abs(on_half["l0"] - base["l0"]) < 1e-3, dtype
        trained_on_half = _metrics(saelab.train_sae(stores[dtype], **train), x_ND)
        assert abs(trained_on_half["explained_variance"] - base["explained_variance"]) < 1e-3


def test_disk_use_is_printed_and_checked(stories, medical_texts, tmp_path, capfd, monkeypatch):
    args = {"max_tokens": 1024, "ctx_len": 64, "progress": False}
    hooks = ["resid_post.0", "resid_post.1", "resid_post.2"]
    saelab.harvest(stories, hooks, medical_texts, cache=tmp_path / "c", dtype="float16", **args)
    # 1024 tokens x 3 hookpoints x (64 x 2 bytes + 8 index bytes) = 417,792 bytes
    err = capfd.readouterr().err
    assert "1,024 tokens x 3 hookpoints x 64 x float16 ~ 418 kB" in err
    on_disk = sum(p.stat().st_size for p in (tmp_path / "c").rglob("*.safetensors"))
    assert 0.9 * 417_792 < on_disk < 417_792 + 3 * 20_000  # + BOS rows dropped, + tokens

    class Usage:
        free = 400_000

    monkeypatch.setattr("saelab.cache_format.shutil.disk_usage", lambda path: Usage)
    with pytest.raises(OSError, match=r"needs ~418 kB, the filesystem of .* has 400 kB free"):
        saelab.harvest(stories, hooks, medical_texts, cache=tmp_path / "d", dtype="float16", **args)
    assert not (tmp_path / "d").exists()
