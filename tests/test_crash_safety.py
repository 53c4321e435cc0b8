"""Crash safety, tested by killing real processes: SIGKILL mid-training resumes to the
same weights bit for bit; SIGKILL mid-save leaves the old SAE or the new one, whole; a
read-only place or a full disk is a clear error that leaves nothing half-written."""

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import saelab
import saelab.io
from saelab.sae.folder import WEIGHTS_FILE

TRAIN = {"kind": "topk", "width": 128, "k": 8, "batch_size": 64, "max_tokens": 64 * 300}
N_STEPS = 300
# The child runs `train_sae` on the saved store and saves the result to argv[2];
# argv[3], when given, is its checkpoint folder (a checkpoint after every step, so most of
# its time is spent writing one and a kill lands mid-write).
TRAIN_CHILD = f"""
import sys, torch, saelab
torch.set_num_threads(1)
store = saelab.ActivationStore.load(sys.argv[1])
ckpt = {{"checkpoint_dir": sys.argv[3], "checkpoint_every": 1}} if len(sys.argv) > 3 else {{}}
saelab.train_sae(store, progress=False, **{TRAIN!r}, **ckpt).save(sys.argv[2])
"""
# The child saves SAE seed 1 and seed 2 to argv[1] in turn, forever.
SAVE_CHILD = """
import sys, saelab
saes = [saelab.make_sae("topk", 64, 512, k=8, seed=seed) for seed in (1, 2)]
saes[0].save(sys.argv[1])
print("saved", flush=True)
i = 1
while True:
    saes[i % 2].save(sys.argv[1])
    i += 1
"""


def run_child(source: str, *args, tmp: Path) -> subprocess.Popen:
    tmp.mkdir(exist_ok=True)
    script = tmp / "child.py"
    script.write_text(source)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()


def temporaries(folder: Path) -> list[str]:
    """What a killed or failed writer could leave: saelab's hidden `.name.tmp-<pid>`."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def assert_same_weights(a: Path, b: Path) -> None:
    tensors_a, tensors_b = load_file(a / WEIGHTS_FILE), load_file(b / WEIGHTS_FILE)
    assert sorted(tensors_a) == sorted(tensors_b)
    for name, value in tensors_a.items():
        assert torch.equal(value, tensors_b[name]), name


@pytest.fixture(scope="module")
def saved_store(medical_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("store") / "cache"
    medical_store.save(folder)
    return folder


def test_sigkill_during_training_resumes_to_identical_weights(saved_store, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the child: the same kernels, so the same bits
    try:
        store = saelab.ActivationStore.load(saved_store)
        saelab.train_sae(store, progress=False, **TRAIN).save(tmp_path / "reference")
    finally:
        torch.set_num_threads(threads)
    run, trainer_state = tmp_path / "run", tmp_path / "run" / "checkpoint" / "trainer.pt"
    rng, killed_at = random.Random(15), []
    for _ in range(2):  # killed twice: the second run resumes and is killed again
        proc = run_child(TRAIN_CHILD, saved_store, tmp_path / "out", run, tmp=tmp_path)
        seen = trainer_state.stat().st_mtime_ns if trainer_state.exists() else None
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if trainer_state.exists() and trainer_state.stat().st_mtime_ns != seen:
                break  # this run has written a checkpoint of its own
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.1))
        kill(proc)
        # whatever the kill interrupted, the checkpoint in place is whole and loads
        killed_at.append(torch.load(trainer_state, weights_only=False)["step"])
        saelab.load_sae(run / "checkpoint" / "sae")
    assert 0 < killed_at[0] < killed_at[1] < N_STEPS, killed_at  # both stopped part-way
    resumed = run_child(TRAIN_CHILD, saved_store, tmp_path / "out", run, tmp=tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert_same_weights(tmp_path / "reference", tmp_path / "out")
    assert temporaries(run) == []  # the killed writers' temporaries were cleared


def test_sigkill_during_save_leaves_old_or_new_sae_whole(tmp_path):
    versions = [saelab.make_sae("topk", 64, 512, k=8, seed=seed).state_dict() for seed in (1, 2)]
    # four writers at once (one start-up wait), each killed at its own random moment
    folders = [tmp_path / f"w{i}" for i in range(4)]
    procs = [run_child(SAVE_CHILD, folder / "sae", tmp=folder) for folder in folders]
    rng = random.Random(0)
    for proc in procs:
        assert proc.stdout.readline() == "saved\n", proc.stderr.read()
    for proc in procs:
        time.sleep(rng.uniform(0.0, 0.1))
        kill(proc)
    left_behind = [name for folder in folders for name in temporaries(folder)]
    for folder in folders:
        state = saelab.load_sae(folder / "sae").state_dict()
        matches = [i for i, v in enumerate(versions) if all(torch.equal(state[k], v[k]) for k in v)]
        assert len(matches) == 1, folder
    # the kills interrupted writes (they left temporaries), yet every load above was whole
    assert left_behind, "no kill landed mid-write: the test proved nothing"
    saelab.make_sae("topk", 64, 512, k=8, seed=3).save(folders[0] / "sae")
    assert temporaries(folders[0]) == []  # the next write clears a dead writer's leftovers


def make_read_only(folder: Path) -> Path:
    """chmod 0o555, and where that does not bind (root), the immutable attribute."""
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            folder.chmod(0o755)
            pytest.skip("running as root and chattr +i is not available: no read-only folder")
    return folder


def writable_again(folder: Path) -> None:
    subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def test_read_only_folder_is_a_clear_error_leaving_nothing(tmp_path):
    old = saelab.make_sae("topk", 64, 128, k=8, seed=1)
    new = saelab.make_sae("topk", 64, 128, k=8, seed=2)
    out = tmp_path / "out"
    old.save(out / "sae")
    make_read_only(out)
    try:
        with pytest.raises(
            PermissionError,
            match=rf"cannot write {out / 'sae'}: {out} is not "
            r"writable \(the previous version is unchanged\)",
        ):
            new.save(out / "sae")
        with pytest.raises(PermissionError, match=rf"{out / 'fresh'}.*nothing was written"):
            new.save(out / "fresh")
        assert sorted(p.name for p in out.iterdir()) == ["sae"]
        assert torch.equal(saelab.load_sae(out / "sae").W_dec_FD, old.W_dec_FD)
    finally:
        writable_again(out)


def full_disk_after(monkeypatch, n_bytes: int) -> None:
    """The lowest-level write io.py uses (`os.write`) takes `n_bytes` in all, then ENOSPC."""
    real_write, budget = os.write, [n_bytes]

    def write(fd, data):
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real_write(fd, bytes(data)[: budget[0]])
        budget[0] -= written
        return written

    monkeypatch.setattr(saelab.io.os, "write", write)


def test_full_disk_is_a_clear_error_keeping_the_previous_files(tmp_path, monkeypatch):
    old = saelab.make_sae("topk", 64, 128, k=8, seed=1)
    old.save(tmp_path / "sae")
    saelab.io.write_text(tmp_path / "notes.txt", "old notes")
    full_disk_after(monkeypatch, 20_000)  # part-way into the weights file
    new = saelab.make_sae("topk", 64, 128, k=8, seed=2)
    with pytest.raises(
        OSError,
        match=rf"cannot write {tmp_path / 'sae'}: no space left on "
        r"the device \(the previous version is unchanged\)",
    ) as err:
        new.save(tmp_path / "sae")
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(OSError, match=rf"{tmp_path / 'notes.txt'}: no space left"):
        saelab.io.write_text(tmp_path / "notes.txt", "new notes")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "sae"]
    assert (tmp_path / "notes.txt").read_text() == "old notes"
    assert torch.equal(saelab.load_sae(tmp_path / "sae").W_dec_FD, old.W_dec_FD)


def test_full_disk_during_training_keeps_the_last_checkpoint_and_resumes(
    saved_store, tmp_path, monkeypatch
):
    store = saelab.ActivationStore.load(saved_store)
    settings = {**TRAIN, "max_tokens": 64 * 20, "progress": False}
    reference = saelab.train_sae(store, **settings)
    # one checkpoint (cfg.json, 128x64 float32 weights and trainer.pt with Adam's moments,
    # ~206 kB) fits, the second does not
    full_disk_after(monkeypatch, 300_000)
    with pytest.raises(OSError, match=rf"cannot write {tmp_path / 'checkpoint'}: no space left"):
        saelab.train_sae(store, checkpoint_dir=tmp_path, checkpoint_every=5, **settings)
    monkeypatch.undo()
    assert torch.load(tmp_path / "checkpoint" / "trainer.pt", weights_only=False)["step"] == 5
    assert temporaries(tmp_path) == []
    resumed = saelab.train_sae(store, checkpoint_dir=tmp_path, checkpoint_every=5, **settings)
    for name, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_next_write_clears_dead_writers_temporaries_but_not_live_ones(tmp_path, monkeypatch):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    (tmp_path / f".sae.tmp-{dead}").mkdir()  # a writer killed mid-save
    (tmp_path / f".sae.tmp-{os.getppid()}").mkdir()  # a writer still running
    sae = saelab.make_sae("topk", 64, 128, k=8, seed=1)
    sae.save(tmp_path / "sae")
    # where the system cannot swap folders atomically, two renames replace it as well
    monkeypatch.setattr(saelab.io, "_exchange", lambda a, b: False)
    new = saelab.make_sae("topk", 64, 128, k=8, seed=2)
    new.save(tmp_path / "sae")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".sae.tmp-{os.getppid()}", "sae"]
    assert torch.equal(saelab.load_sae(tmp_path / "sae").W_dec_FD, new.W_dec_FD)
