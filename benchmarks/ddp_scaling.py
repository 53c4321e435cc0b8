"""Training tokens/s of `train_sae` at 1 process and at 2 gloo ranks (torchrun, DDP).

Three runs of the same TopK training (the same global batches): one process with 2 and
with 1 intra-op thread (`distributed=False`), and `torchrun --nproc_per_node=2` with 1
thread per rank (`distributed=True`). Each run times the steps after `--warmup` from
rank 0's per-step callback, so process start, the input-scale sample and `make_sae` are
not counted; under DDP a step includes the gradient all-reduce over gloo (TCP on this
host) and the fired-latent all-reduce.

The store is random Gaussian activations saved as a cache in a temporary folder (each
rank memory-maps it, as a real run would), or `--acts FOLDER` for a saved cache.

Usage:
    python benchmarks/ddp_scaling.py                  # d_in 576, width 4608, k 32, 200 steps
    python benchmarks/ddp_scaling.py --steps 40       # quick check
    python benchmarks/ddp_scaling.py --acts acts/smollm2_resid_post.15
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# Benchmark the checkout this script is in, whatever saelab is installed (run from anywhere).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from saelab.activations import ActivationStore
from saelab.train import train_sae

SETUPS = [  # (label, ranks, threads per process)
    ("1 process, 2 threads", 1, 2),
    ("1 process, 1 thread", 1, 1),
    ("2 gloo ranks (torchrun), 1 thread each", 2, 1),
]


def train_worker(args: argparse.Namespace) -> None:
    """One training run; rank 0 writes {tokens_per_s, steps} to `args.result`."""
    torch.set_num_threads(args.threads)
    times: list[float] = []
    train_sae(
        ActivationStore.load(args.acts),
        "topk",
        width=args.width,
        k=args.k,
        batch_size=args.batch_size,
        max_tokens=(args.warmup + args.steps) * args.batch_size,
        log_every=1,
        progress=False,
        callback=lambda log: times.append(time.perf_counter()),
        distributed=args.distributed,
    )
    if times:  # rank 0
        tokens_per_s = args.steps * args.batch_size / (times[-1] - times[args.warmup - 1])
        Path(args.result).write_text(json.dumps({"tokens_per_s": tokens_per_s}))


def cpu_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as handle:
        ticks = [int(v) for v in handle.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def run_setup(args: argparse.Namespace, ranks: int, threads: int, result: Path) -> dict:
    """Launch one setup; its tokens/s and the cores other processes used meanwhile."""
    worker = [str(Path(__file__).resolve()), "--worker", "--result", str(result)]
    worker += ["--acts", str(args.acts), "--threads", str(threads)]
    for name in ("width", "k", "batch_size", "steps", "warmup"):
        worker += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if ranks > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd = [*launcher, f"--nproc_per_node={ranks}", *worker, "--distributed"]
    else:
        cmd = [sys.executable, *worker]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    before_wall, before_busy = time.perf_counter(), cpu_busy_s()
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, env=env, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = (after.ru_utime + after.ru_stime) - (before_children.ru_utime + before_children.ru_stime)
    wall = time.perf_counter() - before_wall
    others = max(0.0, cpu_busy_s() - before_busy - ours) / wall
    return {**json.loads(result.read_text()), "others": others}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--acts", type=Path, help="a saved activation cache (default: random)")
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=512, help="the global batch")
    parser.add_argument("--steps", type=int, default=200, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--tokens", type=int, default=65_536, help="random store size")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the timing starts after a step)")
    if args.worker:
        return train_worker(args)

    with tempfile.TemporaryDirectory() as tmp:
        if args.acts is None:
            acts_ND = torch.randn(
                args.tokens, args.d_in, generator=torch.Generator().manual_seed(0)
            )
            args.acts = ActivationStore.from_tensor(acts_ND, "resid_post.0", "gaussian").save(
                Path(tmp) / "store"
            )
        store = ActivationStore.load(args.acts)
        print(
            f"# TopK k={args.k}, d_in {store.d_in}, width {args.width}, global batch "
            f"{args.batch_size}, {args.steps} timed steps after {args.warmup}; store: {store}"
        )
        rows = [
            (label, run_setup(args, r, t, Path(tmp) / f"{r}x{t}.json")) for label, r, t in SETUPS
        ]
    two_threads, one_thread = rows[0][1]["tokens_per_s"], rows[1][1]["tokens_per_s"]
    print("| setup | tokens/s | vs 1 process, 2 threads | vs 1 thread | other processes (cores) |")
    print("|---|---:|---:|---:|---:|")
    for label, row in rows:
        print(
            f"| {label} | {row['tokens_per_s']:,.0f} | {row['tokens_per_s'] / two_threads:.2f}x "
            f"| {row['tokens_per_s'] / one_thread:.2f}x | {row['others']:.2f} |"
        )
    print(f"# machine: {os.cpu_count()} CPUs, torch {torch.__version__}")


if __name__ == "__main__":
    main()
