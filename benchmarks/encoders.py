"""Encoder and decoder throughput: TopK vs KronSAE encoders, dense vs sparse TopK decoders.

Each row times forward + backward of one part of a training step on random inputs, at
d_in 576 (SmolLM2-135M's width), k 32:
- TopK encoder: `x W_enc + b` (`SAE.pre_acts`, a dense [B,D]@[D,F]) and the top-k;
- KronSAE encoder: the h heads' P and Q products, the `[B, F]` mAND values, the top-k, with
  the kind's own shape rule (`kron_shape`); as the training step does it (`top_latents`: the
  backward only reaches the k chosen latents) and, for comparison, through the full `[B, F]`
  mAND values (`topk_codes(pre_acts(x))`, TopK's path: "dense grad");
- TopK decoders: `decode_topk(W_dec, values, idx, sparse=False/True)` for random codes.
The backward gets a random upstream gradient and reaches every parameter (and, for the
decoders, the code values, as in training). tokens/s = batch / median time of the timed
iterations, after the warm-up ones.

KronSAE's saving is in the matmul: `h(m+n)·d` multiply-adds per token against `F·d`
(`SAE.encoder_multiply_adds`). The mAND values and the top-k over all F latents stay O(B·F) in
time and memory, like TopK's top-k, so at small widths the speedup is below the
multiply-add ratio.

Usage (2 CPU cores):
    python benchmarks/encoders.py                          # widths 4608 18432 65536
                                                           # (~1.5 min with --threads 1)
    python benchmarks/encoders.py --widths 4608 --iters 3  # quick check
    python benchmarks/encoders.py --threads 1              # when the other core is busy
    python benchmarks/encoders.py --head 16 16             # KronSAE heads of 16 x 16
                                                           # (an eighth of TopK's MACs)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

# Benchmark the checkout this script is in, whatever saelab is installed (run from anywhere).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cpu_monitor import CpuMonitor

import saelab
from saelab.sae.topk import decode_topk, topk_codes


def tokens_per_s(step: Callable[[], None], batch: int, warmup: int, iters: int) -> float:
    """`batch` / the median time of `iters` calls of `step`, after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def encoder_step(
    sae: saelab.SAE, x_BD: torch.Tensor, k: int, kron_top_latents: bool = False
) -> Callable[[], None]:
    """Forward + backward of `sae`'s top-k codes (`topk_codes(pre_acts)` or KronSAE's
    `top_latents`), gradients dropped after."""
    grad_BK = torch.randn(len(x_BD), k, generator=torch.Generator().manual_seed(1))

    def step() -> None:
        if kron_top_latents:
            values_BK, _ = sae.top_latents(*sae.head_acts(x_BD), k)
        else:
            values_BK, _ = topk_codes(sae.pre_acts(x_BD), k)
        (values_BK * grad_BK).sum().backward()
        sae.zero_grad(set_to_none=True)

    return step


def decoder_step(W_dec_FD: torch.Tensor, B: int, k: int, sparse: bool) -> Callable[[], None]:
    """Forward + backward of `decode_topk` for random codes (k distinct latents per token)."""
    g = torch.Generator().manual_seed(2)
    F = W_dec_FD.shape[0]
    idx_BK = torch.stack([torch.randperm(F, generator=g)[:k] for _ in range(B)])
    values_BK = torch.rand(B, k, generator=g).requires_grad_()
    grad_BD = torch.randn(B, W_dec_FD.shape[1], generator=g)

    def step() -> None:
        (decode_topk(W_dec_FD, values_BK, idx_BK, sparse) * grad_BD).sum().backward()
        W_dec_FD.grad = values_BK.grad = None

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[4608, 18432, 65536])
    parser.add_argument("--d-in", type=int, default=576, help="SmolLM2-135M's width")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--head",
        type=int,
        nargs=2,
        metavar=("M", "N"),
        default=None,
        help="KronSAE head shape m n (default: kron_shape's rule, 8 x 8)",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    B, D, k = args.batch_size, args.d_in, args.k
    x_BD = torch.randn(B, D, generator=torch.Generator().manual_seed(0))
    monitor = CpuMonitor()
    rows = []
    for F in args.widths:
        topk = saelab.make_sae("topk", D, F, k=k)
        kron = saelab.make_sae(
            "kron", D, F, k=k, **({"m": args.head[0], "n": args.head[1]} if args.head else {})
        )
        time_row = {
            "topk_enc": tokens_per_s(encoder_step(topk, x_BD, k), B, args.warmup, args.iters),
            "kron_enc": tokens_per_s(
                encoder_step(kron, x_BD, k, kron_top_latents=True), B, args.warmup, args.iters
            ),
            "kron_dense": tokens_per_s(encoder_step(kron, x_BD, k), B, args.warmup, args.iters),
            "dense_dec": tokens_per_s(
                decoder_step(topk.W_dec_FD, B, k, sparse=False), B, args.warmup, args.iters
            ),
            "sparse_dec": tokens_per_s(
                decoder_step(topk.W_dec_FD, B, k, sparse=True), B, args.warmup, args.iters
            ),
        }
        shape = f"{kron.cfg.heads}x{kron.cfg.m}x{kron.cfg.n}"
        rows.append(
            (F, shape, topk.encoder_multiply_adds() / kron.encoder_multiply_adds(), time_row)
        )
        del topk, kron

    cpu_line, _ = monitor.report()
    print(
        f"# forward+backward tokens/s, d_in {D}, batch {B}, k {k}, median of {args.iters} "
        f"after {args.warmup} warm-up, torch threads {torch.get_num_threads()}, "
        f"saelab from {Path(saelab.__file__).parent}"
    )
    print(cpu_line)
    print(
        "# enc MAC ratio = TopK encoder multiply-adds / KronSAE's = F / (h(m+n)); "
        "speedup = KronSAE / TopK encoder tok/s"
    )
    print()
    print(
        "| width | kron h x m x n | enc MAC ratio | TopK enc tok/s | KronSAE enc tok/s | speedup "
        "| KronSAE enc (dense grad) tok/s | dense dec tok/s | sparse dec tok/s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for F, shape, mac_ratio, t in rows:
        print(
            f"| {F} | {shape} | {mac_ratio:.1f} | {t['topk_enc']:,.0f} | {t['kron_enc']:,.0f} "
            f"| {t['kron_enc'] / t['topk_enc']:.2f} | {t['kron_dense']:,.0f} "
            f"| {t['dense_dec']:,.0f} | {t['sparse_dec']:,.0f} |"
        )
    final = [t for F, _, _, t in rows if F == 65536]
    if final:
        print(
            f"kron_vs_topk_encoder_speedup_65536: {final[0]['kron_enc'] / final[0]['topk_enc']:.2f}"
        )


if __name__ == "__main__":
    main()
