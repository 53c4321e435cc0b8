"""Quality against sparsity and cost: HierarchicalTopK vs per-k TopK, KronSAE vs TopK.

`compare_hierarchical` trains one HierarchicalTopK SAE (top K = max k) and one TopK SAE
per k, all of one width on the same tokens, and evaluates the HierarchicalTopK SAE at
every k beside the TopK SAE trained there (arXiv 2505.24473's Pareto claim; docs/methods.md,
"HierarchicalTopK"). `compare_kron` trains KronSAE and TopK at equal width and k and
reports quality next to encoder cost (arXiv 2505.22255; docs/methods.md, "KronSAE").
Training data is the `trained_on` corpus (harvested once) or a `store` to reuse.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from saelab.activations import ActivationStore
from saelab.experiments.common import (
    held_out_scores,
    save_outputs,
    summary_metrics,
    timed_train,
    training_store,
)
from saelab.sae.kron import KronConfig

HIERARCHICAL_SPEC = ["sae", "kind", "width", "k"]
KRON_SPEC = ["sae", "kind", "width", "k", "heads", "m", "n"]
KRON_COST = ["encoder_multiply_adds", "encoder_cost_vs_topk", "train_seconds", "train_tokens_per_s"]


def compare_hierarchical(
    model,
    hookpoint: str,
    trained_on: str = "medical",
    store: ActivationStore | None = None,
    evaluated_on: str = "medical",
    width: int = 4608,
    ks=(8, 16, 32, 64),
    k_sets=("all",),
    max_tokens: int = 200_000,
    eval_max_tokens: int = 8192,
    seed: int = 0,
    out: str | Path | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    **train_options,
) -> pd.DataFrame:
    """One HierarchicalTopK SAE (K = max(ks)) per loss set in `k_sets` vs a TopK SAE per k.

    `k_sets`: the `k_set` of each HierarchicalTopK SAE ("all", "geometric" or a list of k;
    see `HierarchicalTopKConfig`), its kind labelled `hierarchical_topk[<k_set>]`. All SAEs
    have `width`, see the same `max_tokens` tokens (same seed, so the same batches) and are
    evaluated in one `evaluate` call on `eval_max_tokens` tokens of `evaluated_on`'s test
    split: the HierarchicalTopK SAE once per k (`{name}@k{k}`), each TopK at its own k.
    Returns `HIERARCHICAL_SPEC`, the `SUMMARY_METRICS` that `evaluate(..., linear=False)`
    reports and `train_seconds` (the wall time of each training run; the HierarchicalTopK
    one is shared by its rows), one row per (SAE, k).
    """
    ks = sorted(int(k) for k in ks)
    store = training_store(model, hookpoint, trained_on, store, max_tokens, progress)
    # passed to every train and evaluate
    run = {"device": device, "progress": progress, "dtype": dtype}
    common = {
        "width": width,
        "max_tokens": max_tokens,
        "seed": seed,
        **run,
        **train_options,
    }
    saes, seconds, kinds, hierarchical = {}, {}, {}, {}
    for k_set in k_sets:
        label = k_set if isinstance(k_set, str) else "-".join(map(str, k_set))
        label = f"hierarchical_topk[{label}]"
        hier, hier_s = timed_train(store, kind="hierarchical_topk", k=ks[-1], k_set=k_set, **common)
        hierarchical[f"{label}-w{width}-K{ks[-1]}"] = hier
        for k in ks:
            name = f"{label}-w{width}@k{k}"
            saes[name], seconds[name], kinds[name] = hier.at_k(k), hier_s, (label, k)
    for k in ks:
        name = f"topk-w{width}-k{k}"
        saes[name], seconds[name] = timed_train(store, kind="topk", k=k, **common)
        kinds[name] = ("topk", k)
    if out is not None:
        topks = {name: sae for name, sae in saes.items() if kinds[name][0] == "topk"}
        save_outputs(out, {**hierarchical, **topks})
    table = held_out_scores(
        saes, model, hookpoint, evaluated_on, eval_max_tokens, linear=False, **run
    )
    table["kind"] = [kinds[n][0] for n in table["sae"]]
    table["k"] = [kinds[n][1] for n in table["sae"]]
    table["width"] = width
    table["train_seconds"] = [seconds[n] for n in table["sae"]]
    table = table[[*HIERARCHICAL_SPEC, *summary_metrics(table), "train_seconds"]]
    if out is not None:
        save_outputs(out, table=table)
    return table


def compare_kron(
    model,
    hookpoint: str,
    trained_on: str = "medical",
    evaluated_on: str = "medical",
    store: ActivationStore | None = None,
    widths=(4608, 18432),
    k: int = 32,
    head_shapes=(None,),
    seed: int = 0,
    out: str | Path | None = None,
    max_tokens: int = 200_000,
    eval_max_tokens: int = 8192,
    device=None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    **train_options,
) -> pd.DataFrame:
    """KronSAE vs TopK at equal width and k: quality beside encoder cost and training speed.

    For each width: one TopK SAE and one KronSAE per `(m, n)` in `head_shapes` (None: the
    `kron_shape` default), all trained on the same `max_tokens` tokens with the same seed
    and evaluated in one `evaluate` call on `evaluated_on`'s test split. Returns
    `KRON_SPEC` (heads, m, n are 0 for TopK), the `SUMMARY_METRICS` that `evaluate(...,
    linear=False)` reports and `KRON_COST`: `encoder_multiply_adds` per token (h(m+n)d vs
    Fd), `encoder_cost_vs_topk` its ratio to the TopK SAE of that width,
    `train_tokens_per_s` = max_tokens / wall time of the training run (sequential runs on
    a shared machine: compare within one table).
    """
    store = training_store(model, hookpoint, trained_on, store, max_tokens, progress)
    # passed to every train and evaluate
    run = {"device": device, "progress": progress, "dtype": dtype}
    saes, seconds = {}, {}
    for width in widths:
        common = {
            "width": width,
            "max_tokens": max_tokens,
            "seed": seed,
            "k": k,
            **run,
            **train_options,
        }
        saes[f"topk-w{width}"], seconds[f"topk-w{width}"] = timed_train(
            store, kind="topk", **common
        )
        for shape in head_shapes:
            shape_options = {} if shape is None else {"m": shape[0], "n": shape[1]}
            sae, sec = timed_train(store, kind="kron", **shape_options, **common)
            name = f"kron-w{width}-h{sae.cfg.heads}x{sae.cfg.m}x{sae.cfg.n}"
            saes[name], seconds[name] = sae, sec
    if out is not None:
        save_outputs(out, saes)
    table = held_out_scores(
        saes, model, hookpoint, evaluated_on, eval_max_tokens, linear=False, **run
    )
    cfgs = [saes[name].cfg for name in table["sae"]]
    table["kind"] = [c.kind for c in cfgs]
    table["width"] = [c.width for c in cfgs]
    table["k"] = [c.k for c in cfgs]
    krons = [c if isinstance(c, KronConfig) else None for c in cfgs]  # TopK rows: 0 heads
    table["heads"] = [0 if c is None else c.heads for c in krons]
    table["m"] = [0 if c is None else c.m for c in krons]
    table["n"] = [0 if c is None else c.n for c in krons]
    table["encoder_multiply_adds"] = [saes[name].encoder_multiply_adds() for name in table["sae"]]
    topk_cost = {width: saes[f"topk-w{width}"].encoder_multiply_adds() for width in widths}
    table["encoder_cost_vs_topk"] = table["encoder_multiply_adds"] / table["width"].map(topk_cost)
    table["train_seconds"] = [seconds[name] for name in table["sae"]]
    table["train_tokens_per_s"] = max_tokens / table["train_seconds"]
    table = table[[*KRON_SPEC, *summary_metrics(table), *KRON_COST]]
    if out is not None:
        save_outputs(out, table=table)
    return table
