"""SAE training throughput per kind vs the machine's dense-GEMM ideal.

Times `saelab.train_sae` itself on an in-memory `ActivationStore` (random Gaussian
activations by default, `--acts FOLDER` for a saved activation cache), so the step is
exactly the trainer's: batch gather + input scaling + finiteness check + lr schedule +
`training_loss` + backward + `project_decoder_grad` + Adam + `normalize_decoder` + dead-latent
bookkeeping + the per-step log dict. Setup (input-scale sample, `make_sae`, `init_from_sample`) is
excluded by timing from the callback: `log_every=1`, and tokens/s is measured between the
callback after step `warmup-1` and the one after the last step (the log's own cost, a few
`.item()`s and a [B, D] variance, is < 1% of a step and is included).

Every kind in `saelab.SAE_KINDS` at run time (but the composite `residual`) is benchmarked,
with k=32 for kinds whose config has `k` (topk, batchtopk) and target_l0=32 for kinds with
`target_l0` (jumprelu). The trainer's default `dead_tokens` (50,000) means a short run never
marks a latent dead, so the AuxK term of topk-family kinds is skipped; the `+auxk` rows set
dead_tokens=0 (every latent not fired on the previous batch counts as dead) to time the step
with AuxK running, as it does in long runs at large widths.

The ideal: the best-of-N fp32 time of each dense product of a step at that width
(encoder forward [B,D]@[D,F]; decoder forward [B,F]@[F,D]; backward: [B,D]@[D,F]^T-view for
dL/df, [D,B]@[B,F] for dW_enc, [F,B]@[B,D] for dW_dec, and [B,F]@[F,D] for dL/dx which the
trainer does not need) -> 12*B*D*F FLOPs per step; ideal tokens/s = B / (sum of those times)
= GEMM rate / (12*D*F). Ratios above 1 are possible for a kind that skips dense work.

Usage (2 CPU cores):
    python benchmarks/train_step.py                         # defaults: widths 4608 16384,
                                                            # 8 timed steps (~2.5 min quiet)
    python benchmarks/train_step.py --widths 4608 --steps 4 # quick check
    python benchmarks/train_step.py --steps 30 --warmup 3   # the full run (~8 min quiet)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

# Benchmark the checkout this script is in, whatever saelab is installed (run from anywhere).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cpu_monitor import CpuMonitor

import saelab
from saelab.activations import ActivationStore
from saelab.sae import sae_class
from saelab.train import TrainConfig

PEER = "SAELens 6.54 TopK (k=32, batch 1024, Adam, fp32): 3,670 tok/s at 4608, 706 tok/s at 16384"


def gaussian_store(n: int, d: int, seed: int = 0) -> ActivationStore:
    """`n` x `d` standard Gaussian activations as an in-memory store."""
    x_ND = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return ActivationStore.from_tensor(x_ND, hookpoint="resid_post.0", model="gaussian")


def best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@torch.no_grad()
def gemm_times(B: int, D: int, F: int, repeats: int) -> dict[str, float]:
    """Best time of each dense product of one step (2*B*D*F FLOPs each)."""
    g = torch.Generator().manual_seed(0)
    x_BD, gout_BD = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
    f_BF, gpre_BF = torch.randn(B, F, generator=g), torch.randn(B, F, generator=g)
    W_enc_DF, W_dec_FD = torch.randn(D, F, generator=g), torch.randn(F, D, generator=g)
    products = {
        "enc fwd   [B,D]@[D,F]": lambda: x_BD @ W_enc_DF,
        "dec fwd   [B,F]@[F,D]": lambda: f_BF @ W_dec_FD,
        "dL/df     [B,D]@[F,D]^T": lambda: gout_BD @ W_dec_FD.T,
        "dW_enc    [B,D]^T@[B,F]": lambda: x_BD.T @ gpre_BF,
        "dW_dec    [B,F]^T@[B,D]": lambda: f_BF.T @ gout_BD,
        "dL/dx     [B,F]@[D,F]^T": lambda: gpre_BF @ W_enc_DF.T,
    }
    return {name: best_time(fn, repeats) for name, fn in products.items()}


def options_of(kind: str) -> set[str]:
    """The config fields of `kind` (AuxK rows for the kinds with a `k_aux`)."""
    return {f.name for f in fields(sae_class(kind).config_class)}


def kind_options(kind: str, target_l0: float) -> dict:
    """The kind's own sparsity option for L0 `target_l0` (k for the TopK family, target_l0 for
    JumpReLU); none for ReLU, whose L0 follows its L1 coefficient."""
    try:
        return sae_class(kind).sparsity_option(target_l0)
    except ValueError:
        return {}


def time_training(
    store,
    kind: str,
    width: int,
    batch_size: int,
    steps: int,
    warmup: int,
    options: dict,
    dead_tokens: int,
) -> tuple[float, dict]:
    """Tokens/s of `train_sae` over the timed steps, and the last log."""
    n_steps = warmup + steps
    stamps: dict[int, float] = {}
    logs: list[dict] = []

    def callback(log: dict) -> None:
        stamps[log["step"]] = time.perf_counter()
        logs.append(log)

    cfg = TrainConfig(
        kind=kind,
        width=width,
        max_tokens=n_steps * batch_size,
        batch_size=batch_size,
        dead_tokens=dead_tokens,
        scale_sample=min(20_000, len(store)),
        options=options,
    )
    saelab.train_sae(
        store, config=cfg, callback=callback, device="cpu", progress=False, log_every=1
    )
    elapsed = stamps[n_steps - 1] - stamps[warmup - 1]
    return steps * batch_size / elapsed, logs[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[4608, 16384])
    parser.add_argument("--d-in", type=int, default=576, help="SmolLM2-135M's width")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument(
        "--target-l0", type=float, default=32, help="for kinds with a target_l0 (jumprelu)"
    )
    parser.add_argument(
        "--kinds", nargs="+", default=None, help="default: every kind in saelab.SAE_KINDS"
    )
    parser.add_argument("--steps", type=int, default=8, help="timed steps per row (full: 30)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    parser.add_argument(
        "--no-auxk-rows", action="store_true", help="skip the +auxk (dead_tokens=0) rows"
    )
    parser.add_argument("--store-tokens", type=int, default=65_536, help="size of the random store")
    parser.add_argument(
        "--acts", default=None, help="a saved ActivationStore folder instead of random data"
    )
    parser.add_argument("--gemm-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error(
            "--warmup must be at least 1 (the timing starts at the callback of step warmup-1)"
        )

    torch.set_num_threads(args.threads)
    # Composite kinds (residual) are built from trained SAEs, not trained from scratch.
    kinds = args.kinds or [k for k, cls in saelab.SAE_KINDS.items() if not cls.composite]
    if args.acts:
        store = ActivationStore.load(args.acts)
        data = f"real activations from {args.acts} ({len(store):,} tokens)"
    else:
        store = gaussian_store(args.store_tokens, args.d_in)
        data = f"random Gaussian activations ({len(store):,} x {store.d_in} in memory)"
    B, D = args.batch_size, store.d_in

    monitor = CpuMonitor()
    ideal: dict[int, float] = {}
    gemm: dict[int, dict[str, float]] = {}
    rows = []
    for F in args.widths:
        # The products are timed before and after this width's training runs (best of both),
        # so a slow spell of the shared machine does not move only one side of the ratio.
        gemm[F] = gemm_times(B, D, F, args.gemm_repeats)
        width_rows = []
        for kind in kinds:
            options = kind_options(kind, args.target_l0)
            variants = [("", 50_000)]
            if not args.no_auxk_rows and "k_aux" in options_of(kind):
                variants.append(("+auxk", 0))
            for suffix, dead_tokens in variants:
                tok_s, log = time_training(
                    store, kind, F, B, args.steps, args.warmup, options, dead_tokens
                )
                width_rows.append((kind + suffix, F, tok_s, log))
        after = gemm_times(B, D, F, args.gemm_repeats)
        gemm[F] = {name: min(t, after[name]) for name, t in gemm[F].items()}
        ideal[F] = B / sum(gemm[F].values())
        rows += [(name, F_, tok_s, ideal[F], log) for name, F_, tok_s, log in width_rows]

    print(
        f"# dense fp32 products of one step (best of 2x{args.gemm_repeats}, "
        f"before and after the width's runs), torch threads {torch.get_num_threads()}"
    )
    for F, times in gemm.items():
        for name, t in times.items():
            print(
                f"#   F={F:<6} {name:<26} {t * 1e3:8.1f} ms  {2 * B * D * F / t / 1e9:7.1f} GFLOP/s"
            )
        total = sum(times.values())
        tight = B / (total - times["dL/dx     [B,F]@[D,F]^T"])
        print(
            f"#   F={F:<6} 12*B*D*F step: {total * 1e3:.0f} ms -> "
            f"{12 * B * D * F / total / 1e9:.1f} GFLOP/s, ideal {ideal[F]:,.0f} tok/s "
            f"(10*B*D*F without dL/dx: {tight:,.0f} tok/s)"
        )

    cpu_line, _ = monitor.report()
    print(
        f"# SAE training step: d_in {D}, batch {B}, {args.steps} timed steps after "
        f"{args.warmup} warm-up, {data}, saelab from {Path(saelab.__file__).parent}"
    )
    print(cpu_line)
    print("# (quoted from DESIGN.md, not measured here) " + PEER)
    final_width = 16384 if 16384 in args.widths else args.widths[0]
    print(
        f"# ratio = tokens/s / ideal tokens/s; the final line is topk at width {final_width}; "
        "l0 and dead (fraction of latents counted dead) are from the last step"
    )
    header = (
        f"{'kind':<16} {'width':>6} {'tokens/s':>9} {'ideal tok/s':>12} {'ratio':>6} "
        f"{'l0':>7} {'dead':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, F, tok_s, ideal_s, log in rows:
        print(
            f"{name:<16} {F:>6} {tok_s:>9,.0f} {ideal_s:>12,.0f} {tok_s / ideal_s:>6.2f} "
            f"{log['l0']:>7.1f} {log['dead_fraction']:>6.1%}"
        )
    final = [r for r in rows if r[0] == "topk" and r[1] == final_width]
    if final:
        name, F, tok_s, ideal_s, _ = final[0]
        print(f"# final line: topk at width {F} (trainer defaults, AuxK idle)")
        print(f"topk_step_vs_gemm_ideal: {tok_s / ideal_s:.3f}")


if __name__ == "__main__":
    main()
