"""The training-quality headline table (README "Training quality"), at a small size, in minutes.

One cached harvest of SmolLM2-135M `resid_post.15` on medical text (train and held-out
splits), then, for each seed:
- JumpReLU at `--target-l0` against TopK with k = the JumpReLU's *measured* L0 (rounded):
  explained variance, L0, dead fraction (never fired) on all held-out tokens and on the
  first 8,192, the fraction of latents firing on more than 10% of tokens;
- BatchTopK at k = `--k`: inference L0 against k;
- HierarchicalTopK (K = 64, the default loss set) against a TopK trained at each
  k in {8, 16, 32, 64}: FVU at each k;
- KronSAE against TopK at k = `--k`: EV, training FLOPs per token, training tokens/s.
Rows are means over seeds with the spread (max - min) in brackets.

    python benchmarks/quality.py                            # width 2304, 100k tokens, 2 seeds
    python benchmarks/quality.py --width 4608 --train-tokens 150000 --sections jumprelu
    python benchmarks/quality.py --model stories260k        # a smoke run in about a minute
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from saelab.sae import fires
from saelab.sae.topk import use_sparse_decoder
from saelab.train import train_sae

KS = (8, 16, 32, 64)


def held_out(sae, x_ND: torch.Tensor, k: int | None = None, batch: int = 4096) -> dict:
    """EV, FVU, L0, dead (all tokens; first 8,192) and >10% firing fractions on `x_ND`."""
    count_F, count8k_F = torch.zeros(sae.cfg.width), torch.zeros(sae.cfg.width)
    sq_err, l0 = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(x_ND), batch):
            x = x_ND[start : start + batch]
            out = sae(x) if k is None else sae(x, k=k)
            fired = fires(out.f)
            count_F += fired.sum(0)
            if start < 8192:
                count8k_F += fired[: 8192 - start].sum(0)
            sq_err += (out.x_hat - x).pow(2).sum().item()
            l0 += fired.sum().item()
    fvu = sq_err / (x_ND - x_ND.mean(0)).pow(2).sum().item()
    return {
        "ev": 1 - fvu,
        "fvu": fvu,
        "l0": l0 / len(x_ND),
        "dead": (count_F == 0).float().mean().item(),
        "dead_8k": (count8k_F == 0).float().mean().item(),
        "dense_10pct": (count_F > 0.1 * len(x_ND)).float().mean().item(),
    }


def train_flops_per_token(sae) -> int:
    """6 × multiply-adds per token (the forward, and the backward at twice that): the encoder,
    and the decoder's k rows where the sparse decoder runs, else all F rows (JumpReLU, ReLU,
    and a TopK-family SAE narrow enough for the dense path). benchmarks/gpu.py counts MFU with
    it too."""
    cfg = sae.cfg
    k = getattr(cfg, "k", None)
    rows = k if k is not None and use_sparse_decoder(cfg) else cfg.width
    return 6 * (sae.encoder_multiply_adds() + rows * cfg.d_in)


def cell(values: list[float], digits: int = 3) -> str:
    """Mean over seeds, with the spread (max - min) when there are several."""
    mean = statistics.fmean(values)
    spread = f" ({max(values) - min(values):.{digits}f})" if len(values) > 1 else ""
    return f"{mean:.{digits}f}{spread}"


def jumprelu_rows(store, x_ND, args) -> None:
    print(f"\n### JumpReLU (target L0 {args.target_l0:g}) vs TopK at its measured L0\n")
    print("| SAE | L0 | EV | dead (all) | dead (8k) | >10% |\n|---|---|---|---|---|---|")
    jump, top = [], []
    for seed in args.seeds:
        sae = train_sae(store, "jumprelu", width=args.width, target_l0=args.target_l0, seed=seed,
                        progress=False)  # fmt: skip
        jump.append(held_out(sae, x_ND))
        k = max(1, round(jump[-1]["l0"]))
        topk = train_sae(store, "topk", width=args.width, k=k, seed=seed, progress=False)
        top.append(held_out(topk, x_ND))
    for name, rows in (("jumprelu", jump), ("topk at the measured L0", top)):
        print(
            f"| {name} | {cell([r['l0'] for r in rows], 1)} | {cell([r['ev'] for r in rows])} "
            f"| {cell([r['dead'] for r in rows])} | {cell([r['dead_8k'] for r in rows])} "
            f"| {cell([r['dense_10pct'] for r in rows], 4)} |",
            flush=True,
        )


def batchtopk_rows(store, x_ND, args) -> None:
    print(f"\n### BatchTopK inference L0 (k = {args.k})\n")
    rows = []
    for seed in args.seeds:
        sae = train_sae(store, "batchtopk", width=args.width, k=args.k, seed=seed, progress=False)
        rows.append(held_out(sae, x_ND))
    print("| k | inference L0 | L0 / k | EV |\n|---|---|---|---|")
    l0s = [r["l0"] for r in rows]
    print(
        f"| {args.k} | {cell(l0s, 1)} | {cell([v / args.k for v in l0s], 2)} "
        f"| {cell([r['ev'] for r in rows])} |",
        flush=True,
    )


def hierarchical_rows(store, x_ND, args) -> None:
    print("\n### HierarchicalTopK (K = 64) vs TopK trained at each k: FVU\n")
    per_k = {k: [] for k in KS}
    hier = {k: [] for k in KS}
    for seed in args.seeds:
        for k in KS:
            sae = train_sae(store, "topk", width=args.width, k=k, seed=seed, progress=False)
            per_k[k].append(held_out(sae, x_ND)["fvu"])
        sae = train_sae(store, "hierarchical_topk", width=args.width, k=max(KS), seed=seed,
                        progress=False)  # fmt: skip
        for k in KS:
            hier[k].append(held_out(sae, x_ND, k=k)["fvu"])
    print("| k | TopK trained at k | HierarchicalTopK |\n|---|---|---|")
    for k in KS:
        print(f"| {k} | {cell(per_k[k])} | {cell(hier[k])} |", flush=True)


def kron_rows(store, x_ND, args) -> None:
    print(f"\n### KronSAE vs TopK (k = {args.k}, same tokens)\n")
    print(
        "| SAE | EV | dead | training GFLOPs / 1k tokens | training tok/s |\n|---|---|---|---|---|"
    )
    for kind in ("topk", "kron"):
        rows, speeds = [], []
        for seed in args.seeds:
            started = time.perf_counter()
            sae = train_sae(store, kind, width=args.width, k=args.k, seed=seed, progress=False)
            steps = sae.cfg.training["n_steps"] * sae.cfg.training["batch_size"]
            speeds.append(steps / (time.perf_counter() - started))
            rows.append(held_out(sae, x_ND))
        flops = train_flops_per_token(sae) * 1000 / 1e9
        print(
            f"| {kind} | {cell([r['ev'] for r in rows])} | {cell([r['dead'] for r in rows])} "
            f"| {flops:.2f} | {statistics.fmean(speeds):,.0f} |",
            flush=True,
        )


SECTIONS = {
    "jumprelu": jumprelu_rows,
    "batchtopk": batchtopk_rows,
    "hierarchical": hierarchical_rows,
    "kron": kron_rows,
}


def load_stores(args):
    """(train store, held-out `[N, d]` tensor), harvested once into `--cache`."""
    import saelab
    from saelab.activations import ActivationStore

    root = Path(args.cache) / f"{args.model}_{args.hookpoint}"
    folders = {
        "train": root / f"train_{args.train_tokens}",
        "test": root / f"test_{args.eval_tokens}",
    }
    if not all((f / "manifest.json").exists() for f in folders.values()):
        model = saelab.load_model(args.model)
        for split, folder in folders.items():
            n = args.train_tokens if split == "train" else args.eval_tokens
            texts = saelab.load_corpus("medical", split=split)
            saelab.harvest(model, args.hookpoint, texts, max_tokens=n, cache=folder)
    store = ActivationStore.load(folders["train"])
    test = ActivationStore.load(folders["test"])
    return store, test.get(torch.arange(len(test)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--hookpoint", default=None, help="default resid_post.15 (stories: .4)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--width", type=int, default=2304)
    parser.add_argument("--target-l0", type=float, default=40)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--train-tokens", type=int, default=100_000)
    parser.add_argument("--eval-tokens", type=int, default=16_384)
    parser.add_argument("--cache", default=str(Path.home() / ".cache/saelab/quality"))
    args = parser.parse_args()
    if args.hookpoint is None:
        args.hookpoint = "resid_post.15" if args.model.startswith("smollm2") else "resid_post.4"
    store, x_ND = load_stores(args)
    print(
        f"{args.model} {args.hookpoint}: train {len(store):,} tokens, held-out {len(x_ND):,}; "
        f"width {args.width}, seeds {args.seeds}, {torch.get_num_threads()} threads"
    )
    started = time.time()
    for name in args.sections:
        SECTIONS[name](store, x_ND, args)
    print(f"\n{(time.time() - started) / 60:.1f} min of training and evaluation")


if __name__ == "__main__":
    main()
