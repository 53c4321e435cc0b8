"""Latency of the FeatureExplorer: time from a latent change to the updated view.

A latent change sets `explorer.latent.value`, whose observer redraws every panel
(`FeatureExplorer.refresh`: `FeatureIndex.view` + the HTML renderers); this times that
assignment, so it is what a notebook user waits for (widget messages to the browser
excluded). The store is `--model`'s `--hookpoint` (default SmolLM2-135M `resid_post.15`,
d_model 576; `--model stories260k --hookpoint resid_post.2` for a fast run) on 16k tokens of
the medical corpus; the SAEs are random-init TopK (k=32),
which fire like trained ones (32 latents per token). Indexing the store (one encode pass,
tqdm bar) is timed separately; `--plain` adds the index-free path (`max_entries=0`:
every view re-encodes the store for its latent), the correctness reference.

Usage (2 CPU cores, a few minutes):
    OMP_NUM_THREADS=1 python benchmarks/explorer_latency.py
    python benchmarks/explorer_latency.py --widths 4608 --changes 20 --plain
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import saelab
from saelab.features.codes import MAX_ENTRIES
from saelab.widgets import FeatureExplorer


def time_changes(explorer: FeatureExplorer, latents: list[int]) -> list[float]:
    """Seconds per latent change: the assignment runs the observer (`refresh`) in place."""
    out = []
    for f in latents:
        start = time.perf_counter()
        explorer.latent.value = f
        out.append(time.perf_counter() - start)
        assert f"#{f} of" in explorer.header_html.value  # the view really changed
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--hookpoint", default="resid_post.15")
    parser.add_argument("--widths", type=int, nargs="+", default=[4608, 18432])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--plain", action="store_true", help="also time the index-free path")
    args = parser.parse_args()

    model = saelab.load_model(args.model, device="cpu")
    texts = saelab.load_corpus("medical", split="train")
    store = saelab.harvest(model, args.hookpoint, texts, max_tokens=args.tokens, ctx_len=128)
    print(f"store: {store}")
    rows = []
    for width in args.widths:
        sae = saelab.make_sae("topk", store.d_in, width, k=32, seed=0)
        sae.cfg.hookpoint = args.hookpoint
        paths = [("index", MAX_ENTRIES)] + ([("plain", 0)] if args.plain else [])
        for path, max_entries in paths:
            start = time.perf_counter()
            explorer = FeatureExplorer(sae, model, args.hookpoint, store, max_entries=max_entries)
            build = time.perf_counter() - start
            alive = explorer.index.alive
            latents = random.Random(width).sample(alive, min(args.changes, len(alive)))
            times = time_changes(explorer, latents)
            rows.append((width, path, build, statistics.median(times), max(times), len(times)))

    print(f"\n{'width':>6} {'path':>6} {'build s':>8} {'median s':>9} {'max s':>7} {'changes':>8}")
    for width, path, build, med, worst, n in rows:
        print(f"{width:>6} {path:>6} {build:>8.2f} {med:>9.3f} {worst:>7.3f} {n:>8}")


if __name__ == "__main__":
    main()
