"""`saelab cache | train | eval | compare | report | flow | steer` run in-process on
stories260K from the tiny configs in configs/tiny/, each with a `--set` override, and each
output checked against the direct Python call the config stands for."""

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import saelab
from saelab.activations import ActivationStore
from saelab.cli import main

TINY = Path(__file__).parent.parent / "configs" / "tiny"
HOOK = "resid_post.2"


def run_main(*argv) -> str:
    """`saelab.cli.main(argv)`'s stdout (it must return 0)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(a) for a in argv]) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """`saelab cache` with max_tokens raised from the config's 2048 to 4096."""
    out = tmp_path_factory.mktemp("cli") / "cache"
    stdout = run_main("cache", TINY / "cache.toml", "--out", out, "--set=harvest.max_tokens=4096")
    assert f"cache: {out}" in stdout
    return out


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory):
    """`saelab train` from the cache, width and k overridden."""
    out = tmp_path_factory.mktemp("cli") / "train"
    sets = [f"train_sae.store={cache}", "train_sae.width=96", "train_sae.k=4"]
    stdout = run_main("train", TINY / "train.toml", "--out", out, *[f"--set={s}" for s in sets])
    assert "topk width 96 at resid_post.2" in stdout
    return out


def test_cache_holds_the_direct_harvest_in_float16(cache, stories):
    store = ActivationStore.load(cache)
    texts = saelab.load_corpus("medical", split="train")
    direct = saelab.harvest(
        stories, HOOK, texts, max_tokens=4096, ctx_len=64, dtype=torch.float16, progress=False
    )
    assert len(store) == len(direct) > 3000  # the --set 4096, not the config's 2048
    rows = torch.arange(len(store))
    assert store.info.dtype == "float16"  # the config's dtype = "float16"
    assert torch.equal(store.get(rows), direct.get(rows))


def test_train_equals_train_sae_on_the_same_store(cache, trained):
    sae = saelab.load_sae(trained / "sae")
    assert (sae.cfg.width, sae.cfg.k, sae.cfg.hookpoint) == (96, 4, HOOK)
    direct = saelab.train_sae(
        ActivationStore.load(cache),
        kind="topk",
        width=96,
        k=4,
        batch_size=256,
        device="cpu",
        progress=False,
    )
    for name, weight in direct.state_dict().items():
        assert torch.equal(sae.state_dict()[name], weight), name
    history = pd.read_csv(trained / "history.csv")
    assert history["step"].tolist() == [row["step"] for row in direct.history]


def test_torchrun_two_ranks_train_the_same_sae_and_rank_0_writes_it(cache, trained, tmp_path):
    """`torchrun -m saelab train` (2 gloo ranks, a real process each) passes
    distributed=True: the global batch is the single process's, so the weights agree."""
    sets = [f"train_sae.store={cache}", "train_sae.width=96", "train_sae.k=4"]
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    argv += ["-m", "saelab", "train", str(TINY / "train.toml"), "--out", str(tmp_path)]
    argv += [f"--set={s}" for s in sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("topk width 96 at resid_post.2") == 1  # rank 0 only
    ddp, single = saelab.load_sae(tmp_path / "sae"), saelab.load_sae(trained / "sae")
    for name, weight in single.state_dict().items():
        assert torch.allclose(ddp.state_dict()[name], weight, atol=1e-6, rtol=0), name


def test_train_harvests_when_no_store_is_given(tmp_path):
    stdout = run_main(
        "train", TINY / "train.toml", "--out", tmp_path, "--set", "train_sae.width=32"
    )
    sae = saelab.load_sae(tmp_path / "sae")
    assert (sae.cfg.width, sae.cfg.model, sae.cfg.hookpoint) == (32, "stories260k", HOOK)
    steps = len(pd.read_csv(tmp_path / "history.csv"))
    assert steps >= 1 and "fvu" in stdout


def test_eval_equals_evaluate_of_the_trained_sae(trained, stories, tmp_path):
    sets = [f"--set=load_sae.folder={trained / 'sae'}", "--set=evaluate.ks=[2, 4]"]
    stdout = run_main("eval", TINY / "eval.toml", "--out", tmp_path, *sets)
    table = pd.read_csv(tmp_path / "table.csv")
    assert table["k"].tolist() == [2, 4] and f"table: {tmp_path / 'table.csv'}" in stdout
    sae = saelab.load_sae(trained / "sae")
    texts = saelab.load_corpus("medical", split="test")
    direct = saelab.evaluate(
        sae, stories, HOOK, texts, max_tokens=1024, ctx_len=64, ks=[2, 4], progress=False
    )
    for metric in ("fvu", "l0", "ce_loss_recovered", "n_tokens"):
        assert table[metric].tolist() == pytest.approx(direct[metric].tolist(), rel=1e-6)
    assert table["l0"].tolist() == [2.0, 4.0]


@pytest.fixture(scope="module")
def hierarchical(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "hier"
    sets = ["--set", "compare.ks=[2, 4]"]
    stdout = run_main("compare", TINY / "compare_hierarchical.toml", "--out", out, *sets)
    return out, stdout


def test_compare_hierarchical_trains_and_evaluates_each_k(hierarchical):
    out, stdout = hierarchical
    table = pd.read_csv(out / "table.csv")
    assert sorted(zip(table["sae"], table["k"], strict=True)) == [
        ("hierarchical_topk[all]-w64@k2", 2),
        ("hierarchical_topk[all]-w64@k4", 4),
        ("topk-w64-k2", 2),
        ("topk-w64-k4", 4),
    ]
    assert table["l0"].tolist() == pytest.approx(table["k"].tolist())
    assert saelab.load_sae(out / "topk-w64-k4").cfg.k == 4
    assert saelab.load_sae(out / "hierarchical_topk[all]-w64-K4").cfg.width == 64
    assert "topk-w64-k4" in stdout and "fvu" in stdout


def test_report_draws_the_compare_table(hierarchical):
    out, _ = hierarchical
    stdout = run_main("report", out)
    page = (out / "saelab-report.html").read_text()
    assert "table.csv: HierarchicalTopK vs TopK" in stdout
    assert "HierarchicalTopK vs TopK" in page


def steered(stdout: str) -> tuple[str, str]:
    lines = dict(line.split(":", 1) for line in stdout.splitlines() if ":" in line)
    return lines["unsteered"].strip(), lines["steered"].strip()


def test_flow_and_steer_from_configs_with_flags_winning(tmp_path):
    out = tmp_path / "flow"
    argv = ["flow", TINY / "flow.toml", "--set", "width=24", "--set", "deactivation_layers=none"]
    stdout = run_main(*argv, "--out", out)  # --out beats the config's out
    saes = saelab.flow.load_layer_saes(out / "saes")
    assert len(saes) == 7 and {sae.cfg.width for sae in saes.values()} == {24}
    groups = pd.read_csv(out / "groups.csv")
    assert sorted(set(groups["layer"])) == [1, 2] and "From nowhere" in stdout
    steer = ["steer", TINY / "steer.toml", "--set", f"saes={out / 'saes'}"]
    zero = steered(run_main(*steer, "--strength", "0"))  # the flag beats strength = 4.0
    assert zero[0] == zero[1] and len(zero[0]) > 4
    strong = steered(run_main(*steer, "--set", "strength=64"))
    assert strong[0] == zero[0] and strong[1] != zero[0]
