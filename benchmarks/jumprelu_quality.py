"""JumpReLU training options against TopK at the same measured L0 (issue 14).

Synthetic: the dictionary of tests/synthetic.py (128 features in 32 dims, 4 per token),
width 128, 400k tokens, batch 256, lr 3e-3, as tests/test_train.py trains it; prints the
mean best-match cosine, FVU, L0 and dead fraction per option set and seed.

Real (`--real`): SmolLM2-135M `resid_post.15` on medical text, cached under
`--cache`. Each option set trains a JumpReLU at `--target-l0`; a TopK with k = the
JumpReLU's measured L0 (rounded) is the baseline. Held-out metrics on `--eval-tokens`
tokens: explained variance, L0, dead fraction (never fired) on all of them and on the first
8,192, and the fraction of latents firing on more than 10% of tokens.

    python benchmarks/jumprelu_quality.py                      # synthetic, ~1 min
    python benchmarks/jumprelu_quality.py --real --seeds 0 1   # SmolLM2, ~15 min on 2 cores
    python benchmarks/jumprelu_quality.py --real --options default --seeds 0 1 --ce
    python benchmarks/jumprelu_quality.py --batchtopk          # BatchTopK θ (after --real)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from quality import held_out

from saelab.train import train_sae

# Option sets: "old_default" is saelab's JumpReLU before issue 14 (every field spelled
# out, so it stays reachable whatever the defaults become). "lr" in a set is the weights'
# rate on real data (the synthetic runs all take tests/test_train.py's 3e-3): every set but
# "default" was measured at JumpReLU's earlier 1e-3, with θ at threshold_lr_scale × that.
OLD_DEFAULT = {
    "center_input": False,
    "threshold_init_rule": "quantile",
    "threshold_init": 0.001,
    "threshold_lr_scale": 20.0,
    "threshold_lr": None,
    "topk_cap": None,
    "lr": 1e-3,
}
CENTERED = {
    "center_input": True,
    "threshold_init_rule": "constant",
    "threshold_init": 0.1,
    "threshold_lr_scale": 5.0,
    "threshold_lr": None,
    "topk_cap": None,
    "lr": 1e-3,
}
OPTION_SETS = {
    "default": {},  # train_sae's JumpReLU defaults
    "old_default": OLD_DEFAULT,
    "old+pre_act": {**OLD_DEFAULT, "pre_act_loss_coef": 1.0},
    "old+auxk": {**OLD_DEFAULT, "aux_coef": 0.25},
    "old+tanh": {**OLD_DEFAULT, "sparsity_loss": "tanh"},
    # the parts of "centered", one at a time
    "old+center_input": {**OLD_DEFAULT, "center_input": True},
    "old+constant_init": {**OLD_DEFAULT, "threshold_init_rule": "constant", "threshold_init": 0.1},
    "centered,lr_scale20": {**CENTERED, "threshold_lr_scale": 20.0},
    "centered": CENTERED,
    # centred, θ starting at 4x the target L0 by quantile (so it reaches the target in short
    # real runs, where a constant θ = 0.1 starts at L0 ~ F/2)
    "centered,quantile4": {
        **CENTERED,
        "threshold_init_rule": "quantile",
        "threshold_init": 0.001,
        "init_l0_ratio": 4.0,
    },
    # centred, constant θ, and at most target_l0 latents per token in training (TopK's
    # competition while θ settles): 0.95 on the synthetic dictionary, as TopK
    "centered,cap1": {**CENTERED, "topk_cap": 1.0},
    "centered,cap1.5": {**CENTERED, "topk_cap": 1.5},
    "centered,cap1,lr20": {**CENTERED, "topk_cap": 1.0, "threshold_lr_scale": 20.0},
    "centered,cap1.25,lr20": {**CENTERED, "topk_cap": 1.25, "threshold_lr_scale": 20.0},
    "centered+pre_act": {**CENTERED, "pre_act_loss_coef": 1.0},
    "centered+auxk": {**CENTERED, "aux_coef": 0.25},
}


def synthetic(names: list[str], seeds: list[int]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from synthetic import mean_best_cosine, sparse_dictionary_store

    store, D_FD = sparse_dictionary_store()
    x_ND = store.acts_ND[:8000]
    print("| options | seed | best-match cos | FVU | L0 | dead (8k) |\n|---|---|---|---|---|---|")
    runs = [("topk", {"k": 4}, "topk k=4")] + [
        ("jumprelu", {"target_l0": 4, **OPTION_SETS[n], "lr": 3e-3}, n) for n in names
    ]
    for kind, options, name in runs:
        for seed in seeds:
            sae = train_sae(
                store, kind, width=128, max_tokens=400_000, batch_size=256, seed=seed,
                progress=False, **{"lr": 3e-3, **options},
            )  # fmt: skip
            row = held_out(sae, x_ND)
            cos = mean_best_cosine(sae.W_dec_FD.detach(), D_FD)
            print(
                f"| {name} | {seed} | {cos:.3f} | {1 - row['ev']:.3f} | {row['l0']:.2f} "
                f"| {row['dead_8k']:.2f} |",
                flush=True,
            )


def real(args, names: list[str]) -> None:
    import saelab
    from saelab.activations import ActivationStore

    cache = Path(args.cache)
    train_dir, test_dir = cache / f"train_{args.train_tokens}", cache / f"test_{args.eval_tokens}"
    if not (train_dir / "manifest.json").exists() or not (test_dir / "manifest.json").exists():
        model = saelab.load_model("smollm2-135m")
        for split, n, folder in (
            ("train", args.train_tokens, train_dir),
            ("test", args.eval_tokens, test_dir),
        ):
            texts = saelab.load_corpus("medical", split=split)
            saelab.harvest(model, "resid_post.15", texts, max_tokens=n, cache=folder)
    store = ActivationStore.load(train_dir)
    test = ActivationStore.load(test_dir)
    x_ND = test.get(torch.arange(len(test)))
    print(f"train {len(store):,} tokens, held-out {len(x_ND):,} tokens", flush=True)
    ce = ce_loss_recovered() if args.ce else None
    print(
        "| options | seed | EV | L0 | dead (all) | dead (8k) | >10% | TopK k | TopK EV "
        "| TopK dead |"
        + (" CE rec. | TopK CE rec. |" if ce else "")
        + " min |\n"
        + "|---" * (10 + 2 * bool(ce) + 1)
        + "|"
    )
    for name in names:
        for seed in args.seeds:
            started = time.time()
            sae = train_sae(
                store, "jumprelu", width=args.width, target_l0=args.target_l0, seed=seed,
                progress=False, **OPTION_SETS[name],
            )  # fmt: skip
            row = held_out(sae, x_ND)
            k = max(1, round(row["l0"]))
            topk = train_sae(store, "topk", width=args.width, k=k, seed=seed, progress=False)
            top = held_out(topk, x_ND)
            ce_cells = " {:.3f} | {:.3f} |".format(*ce(sae, topk)) if ce else ""
            print(
                f"| {name} | {seed} | {row['ev']:.3f} | {row['l0']:.1f} | {row['dead']:.3f} "
                f"| {row['dead_8k']:.3f} | {row['dense_10pct']:.4f} | {k} | {top['ev']:.3f} "
                f"| {top['dead']:.3f} |{ce_cells} {(time.time() - started) / 60:.1f} |",
                flush=True,
            )


def ce_loss_recovered():
    """`(jumprelu, topk) -> (CE loss recovered, CE loss recovered)` of both SAEs spliced into
    SmolLM2 on the first 8,192 held-out medical tokens (`saelab.evaluate`)."""
    import saelab

    model = saelab.load_model("smollm2-135m")
    texts = saelab.load_corpus("medical", split="test")

    def both(sae, topk):
        rows = saelab.evaluate(
            {"jumprelu": sae, "topk": topk}, model, "resid_post.15", texts,
            max_tokens=8192, linear=False, progress=False,
        )  # fmt: skip
        ce_by_sae = dict(zip(rows["sae"], rows["ce_loss_recovered"], strict=True))
        return ce_by_sae["jumprelu"], ce_by_sae["topk"]

    return both


def batchtopk_threshold(args) -> None:
    """BatchTopK's inference L0 against k, θ averaged over all post-warm-up steps (the old
    rule, `threshold_average_last=1.0`) and over the last 20% (the default)."""
    from saelab.activations import ActivationStore

    cache = Path(args.cache)
    store = ActivationStore.load(cache / f"train_{args.train_tokens}")
    test = ActivationStore.load(cache / f"test_{args.eval_tokens}")
    x_ND = test.get(torch.arange(len(test)))
    print("| θ averaged over | k | seed | inference L0 | L0 / k | EV |\n|---|---|---|---|---|---|")
    for last in (1.0, 0.2):
        for seed in args.seeds:
            sae = train_sae(
                store, "batchtopk", width=args.width, k=args.k, seed=seed, progress=False,
                threshold_average_last=last,
            )  # fmt: skip
            row = held_out(sae, x_ND)
            print(
                f"| last {last:.0%} of steps | {args.k} | {seed} | {row['l0']:.1f} "
                f"| {row['l0'] / args.k:.2f} | {row['ev']:.3f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", action="store_true", help="SmolLM2 resid_post.15, not synthetic")
    parser.add_argument("--options", nargs="+", default=list(OPTION_SETS), choices=OPTION_SETS)
    parser.add_argument("--batchtopk", action="store_true", help="BatchTopK θ on --real data")
    parser.add_argument("--k", type=int, default=32, help="BatchTopK's k (with --batchtopk)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--target-l0", type=float, default=40)
    parser.add_argument("--train-tokens", type=int, default=150_000)
    parser.add_argument("--eval-tokens", type=int, default=65_536)
    parser.add_argument("--ce", action="store_true", help="--real: CE loss recovered of both SAEs")
    parser.add_argument("--cache", default=str(Path.home() / ".cache/saelab/jumprelu_quality"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.batchtopk:
        batchtopk_threshold(args)
    elif args.real:
        real(args, args.options)
    else:
        synthetic(args.options, args.seeds)


if __name__ == "__main__":
    main()
