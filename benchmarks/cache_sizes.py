"""Bytes on disk of one harvest cached as float32, float16 and bfloat16, and the row error.

    python benchmarks/cache_sizes.py /tmp/cache_sizes    # SmolLM2, 4 hookpoints, 16k tokens
    python benchmarks/cache_sizes.py /tmp/cs --model stories260k --hookpoints resid_post.2

Prints one row per dtype: bytes on disk, bytes per row and hookpoint, and the largest
relative row error ‖Δx‖/‖x‖ against float32 at the second hookpoint (or the only one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import saelab

DTYPES = ("float32", "float16", "bfloat16")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="a scratch folder for the three caches")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--hookpoints",
        nargs="+",
        default=["resid_post.9", "resid_post.15", "mlp_out.15", "attn_out.15"],
    )
    parser.add_argument("--tokens", type=int, default=16_384)
    args = parser.parse_args()
    model = saelab.load_model(args.model, device="cpu")
    texts = saelab.load_corpus("medical", split="train", max_texts=3000)
    rows = {}
    for dtype in DTYPES:
        stores = saelab.harvest(
            model, args.hookpoints, texts, max_tokens=args.tokens, ctx_len=128, dtype=dtype,
            cache=args.out / dtype, progress=False,
        )  # fmt: skip
        if isinstance(stores, saelab.ActivationStore):
            stores = {args.hookpoints[0]: stores}
        rows[dtype] = (len(next(iter(stores.values()))), folder_bytes(args.out / dtype))
    probe = args.hookpoints[min(1, len(args.hookpoints) - 1)]
    reference = saelab.ActivationStore.load(args.out / "float32" / probe)
    x32 = reference.get(torch.arange(len(reference)))
    print(f"{args.model}, {len(args.hookpoints)} hookpoints, {rows['float32'][0]:,} kept rows")
    print("| dtype | bytes on disk | bytes / row / hookpoint | max row error vs float32 |")
    print("|---|--:|--:|--:|")
    for dtype in DTYPES:
        n, size = rows[dtype]
        store = saelab.ActivationStore.load(args.out / dtype / probe)
        x = store.get(torch.arange(len(store)))
        error = ((x - x32).norm(dim=1) / x32.norm(dim=1)).max().item()
        print(f"| {dtype} | {size:,} | {size / (n * len(args.hookpoints)):,.0f} | {error:.1e} |")


if __name__ == "__main__":
    main()
