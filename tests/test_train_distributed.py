"""`train_sae(distributed=True)` in two real gloo ranks under torchrun: the same weights as
one process on the same global batches, the same after a rank is killed and the run
resumed, and a clear error for a global batch the ranks cannot split.

Two torchrun launches in all (each starts three Pythons): the first trains every run and
ends with rank 0 killed mid-run; the second resumes that run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synthetic import sparse_dictionary_store

from saelab.activations import ActivationStore
from saelab.train import train_sae
from saelab.train.distributed import Ranks

# Width 256 at k=2 on 64-token halves: many latents fire in only one rank's half, so
# rank 0's dead counters are wrong unless the fired masks are combined.
RUNS = {
    "topk": {"kind": "topk", "width": 256, "batch_size": 128, "lr": 3e-3, "k": 2},
    "jumprelu": {  # the l0_coef penalty: a per-token mean, so it splits over ranks exactly;
        # lr 3e-4: at 1e-3 float32 rounding grows to 8e-7 in log θ (20x rate) by step 60
        "kind": "jumprelu",
        "width": 256,
        "batch_size": 128,
        "lr": 3e-4,
        "l0_coef": 0.1,
    },
}
MAX_TOKENS = 128 * 60  # 60 steps
KILL_AT_STEP = 27  # after the checkpoint of step 20, before the end

WORKER = """
import json, os, signal, sys
from pathlib import Path
import torch
from saelab.activations import ActivationStore
from saelab.train import is_main_process, train_sae

store, out, runs = ActivationStore.load(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
rank = int(os.environ["RANK"])
for name, args in runs.items():
    kill_at = args.pop("kill_at_step", None)

    def die(log):  # only rank 0 gets callbacks: it dies, torchrun stops the other rank
        if log["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    try:
        sae = train_sae(store, distributed=True, progress=False, log_every=1, callback=die, **args)
    except (ValueError, OSError, RuntimeError) as err:
        (out / f"{name}.rank{rank}.txt").write_text(f"{type(err).__name__}: {err}")
        continue
    saved = {"state": sae.state_dict(), "history": sae.history, "main": is_main_process()}
    torch.save(saved, out / f"{name}.rank{rank}.pt")
"""


def torchrun(folder: Path, store_dir: Path, runs: dict) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2` of WORKER; each rank's outputs land in folder/out."""
    script, out = folder / "worker.py", folder / "out"
    script.write_text(WORKER)
    out.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd += [str(script), str(store_dir), str(out), json.dumps(runs)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def ddp_args(name: str, **extra) -> dict:
    return {**RUNS[name], "max_tokens": MAX_TOKENS, **extra}


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """(folder, store folder, finished torchrun) of the first launch: topk and jumprelu to
    the end, a batch of 129, then a checkpointed topk run whose rank 0 is SIGKILLed."""
    folder = tmp_path_factory.mktemp("ddp")
    store_dir = folder / "store"
    sparse_dictionary_store(n_features=64, n=4096)[0].save(store_dir)
    (folder / "blocker").write_text("not a folder")
    runs = {
        "topk": ddp_args("topk", checkpoint_dir=str(folder / "ddp_topk")),
        "jumprelu": ddp_args("jumprelu"),
        "odd_batch": ddp_args("topk", batch_size=129),
        # rank 0 cannot write its first checkpoint (a file stands where its folder goes)
        "unwritable": ddp_args(
            "topk", checkpoint_dir=str(folder / "blocker" / "run"), checkpoint_every=10
        ),
        "killed": ddp_args(
            "topk",
            checkpoint_dir=str(folder / "run"),
            checkpoint_every=10,
            kill_at_step=KILL_AT_STEP,
        ),
    }
    return folder, store_dir, torchrun(folder, store_dir, runs)


@pytest.fixture(scope="module")
def one_process(launch):
    """The references: each run in one process on the same global batches, with its final
    checkpoint's trainer state."""
    folder, store_dir, _ = launch
    store = ActivationStore.load(store_dir)
    references = {}
    for name in RUNS:
        ckpt = folder / f"one_{name}"
        sae = train_sae(store, progress=False, log_every=1, checkpoint_dir=ckpt, **ddp_args(name))
        references[name] = sae, torch.load(ckpt / "checkpoint" / "trainer.pt", weights_only=False)
    return references


def assert_close_weights(state: dict, sae, atol: float = 1e-6):
    for name, value in sae.state_dict().items():
        diff = (state[name] - value).abs().max().item()
        assert diff <= atol, f"{name} differs by {diff:.2e}"


@pytest.mark.parametrize("name", list(RUNS))
def test_two_ranks_train_the_weights_one_process_trains(launch, one_process, name):
    folder, _, _ = launch
    out = folder / "out"
    assert (out / f"{name}.rank0.pt").exists(), launch[2].stderr[-3000:]
    ranks = [torch.load(out / f"{name}.rank{rank}.pt") for rank in (0, 1)]
    assert [saved["main"] for saved in ranks] == [True, False]  # who saves in a user's script
    for key, value in ranks[0]["state"].items():  # every rank returns the same SAE
        assert torch.equal(value, ranks[1]["state"][key]), key
    sae, trainer_state = one_process[name]
    assert_close_weights(ranks[0]["state"], sae)
    # logged metrics are the ranks' means: loss and L0 are per-token means, so these are
    # the global batch's values
    for ddp_log, log in zip(ranks[0]["history"], sae.history, strict=True):
        assert ddp_log["loss"] == pytest.approx(log["loss"], rel=1e-5)
        assert ddp_log["l0"] == pytest.approx(log["l0"], rel=1e-6)
    if name == "topk":  # rank 0's checkpoint counts firing on both halves
        ddp_state = torch.load(folder / "ddp_topk/checkpoint/trainer.pt", weights_only=False)
        assert torch.equal(ddp_state["since_fired_F"], trainer_state["since_fired_F"])


def test_a_batch_the_ranks_cannot_split_is_a_clear_error(launch):
    folder, _, _ = launch
    for rank in (0, 1):  # every rank raises, none is left waiting in a collective
        message = (folder / "out" / f"odd_batch.rank{rank}.txt").read_text()
        assert "batch_size=129" in message and "2 ranks" in message


def test_a_checkpoint_rank_0_cannot_write_stops_every_rank(launch):
    """Rank 0's error reaches the other rank (which would otherwise wait at the barrier until
    the launch's timeout) and the launch goes on to the next run."""
    out = launch[0] / "out"
    assert "blocker" in (out / "unwritable.rank0.txt").read_text()
    rank1 = (out / "unwritable.rank1.txt").read_text()
    assert rank1 == "RuntimeError: rank 0 could not write the checkpoint (see its error)"
    # and both ranks went on together: the killed run after it reached its step-20 checkpoint
    assert (launch[0] / "run" / "checkpoint" / "trainer.pt").exists()


def test_a_killed_two_rank_run_resumes_to_the_one_process_weights(launch, one_process):
    folder, store_dir, killed = launch
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr  # rank 0 died mid-run
    ckpt = folder / "run" / "checkpoint" / "trainer.pt"
    assert torch.load(ckpt, weights_only=False)["step"] == 20
    args = ddp_args("topk", checkpoint_dir=str(folder / "run"), checkpoint_every=10)
    resumed = torchrun(folder, store_dir, {"resumed": args})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = torch.load(folder / "out" / "resumed.rank0.pt")["state"]
    assert_close_weights(state, one_process["topk"][0])


def test_distributed_outside_torchrun_says_how_to_launch(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    store, _ = sparse_dictionary_store(n_features=64, n=1024)
    with pytest.raises(RuntimeError, match="torchrun --nproc_per_node"):
        train_sae(store, "topk", width=64, batch_size=128, k=4, distributed=True)


def test_each_rank_reads_its_contiguous_part_of_the_global_batch():
    index_B = torch.tensor([3, 8, 9, 14, 20, 21])
    parts = [Ranks(rank, 3, torch.device("cpu"), True).local_rows(index_B) for rank in range(3)]
    assert [part.tolist() for part in parts] == [[3, 8], [9, 14], [20, 21]]
