"""Wall time and peak extra memory of `flow.match` (data-free decoder matching of one block).

Four random TopK SAEs (d_in 576, SmolLM2-135M's width) per width stand in for a block's
resid_post.L-1, mlp_out.L, attn_out.L and resid_post.L; `match` computes top-5 cosines of
every target row against each source in chunks (`decoder_similarity`), so memory stays near
`chunk x F` floats instead of `F x F`.

Usage (2 CPU cores):
    python benchmarks/flow_match.py                   # widths 4608 16384 (~1 min)
    python benchmarks/flow_match.py --widths 65536    # the largest dictionaries
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from saelab import flow
from saelab.sae import make_sae


def block_saes(width: int, d_in: int, layer: int = 12) -> dict:
    names = [
        f"resid_post.{layer - 1}",
        f"mlp_out.{layer}",
        f"attn_out.{layer}",
        f"resid_post.{layer}",
    ]
    saes = {}
    for seed, name in enumerate(names):
        sae = make_sae("topk", d_in, width, k=32, seed=seed)
        sae.cfg.hookpoint = name
        saes[name] = sae
    return saes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[4608, 16384])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'width':>7} {'best s':>8} {'cosines (GFLOP)':>16} {'GFLOP/s':>8} {'max RSS (GB)':>13}")
    for width in args.widths:
        saes = block_saes(width, args.d_in)
        with torch.no_grad():
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                flow.match(saes, 12, top_k=args.top_k)
                best = min(best, time.perf_counter() - start)
        gflop = 3 * 2 * width * width * args.d_in / 1e9
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{width:>7} {best:>8.2f} {gflop:>16.1f} {gflop / best:>8.1f} {rss:>13.2f}")
        print(f"flow_match_seconds_{width}: {best:.2f}")


if __name__ == "__main__":
    main()
