"""Residual SAEs (Koriagin et al., arXiv 2507.12990): base vs base + residual vs domain-only.

A residual SAE is trained on what a frozen broad base SAE leaves of domain activations
(docs/methods.md, "Residual SAE"). The paper's claim: the domain gain is large while
performance on general text stays within 1% of the base. `compare_residual` measures
both sides against a domain-only SAE of the same total width and L0.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from saelab.activations import ActivationStore
from saelab.experiments.common import held_out_scores, save_outputs, summary_metrics, training_store
from saelab.sae import sae_class
from saelab.train import train_residual, train_sae

SPEC_COLUMNS = ["sae", "role", "residual_width", "total_width", "evaluated_on"]
RATIO_COLUMNS = ["ce_loss_recovered_vs_base", "explained_variance_vs_base"]


def compare_residual(
    model,
    hookpoint: str,
    base,
    domain: str = "medical",
    broad: str = "broad",
    widths=(1152, 2304, 4608),
    kind: str = "topk",
    target_l0: float = 16,
    max_tokens: int = 200_000,
    eval_max_tokens: int = 8192,
    domain_only: bool = True,
    seed: int = 0,
    store: ActivationStore | None = None,
    out: str | Path | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    **train_options,
) -> pd.DataFrame:
    """Base vs base + residual vs a domain-only SAE, on held-out domain and broad text.

    `base` is a frozen SAE (typically a broad one from `compare_domains`). For each width
    in `widths` a residual SAE of `kind` (L0 `target_l0`) is trained with
    `saelab.train_residual` on the first `max_tokens` tokens of `domain`'s train split
    (harvested once; `store`: domain activations to use instead). With `domain_only`, a
    `base.cfg.kind` SAE of the same total width and total target L0 (`base.target_l0` +
    `target_l0`) is trained from scratch on the same tokens. Everything is evaluated on
    `eval_max_tokens` tokens of each test split.

    Returns one row per (SAE, evaluation set): `SPEC_COLUMNS`, the `SUMMARY_METRICS` that
    `evaluate(..., linear=False)` reports and `RATIO_COLUMNS`, each the ratio to the base
    on that evaluation set (broad `ce_loss_recovered_vs_base` >= 0.99 is the paper's
    retention claim); `role` is one of base, base+residual, domain-only. With `out`, SAEs
    go to `out/<sae>/` and the table to `out/table.csv`.
    """
    residual_option = sae_class(kind).sparsity_option(target_l0)
    if domain_only:
        if base.target_l0 is None:
            raise ValueError(
                f"a {base.cfg.kind} base has no L0 target to match; pass domain_only=False"
            )
        only_option = sae_class(base.cfg.kind).sparsity_option(base.target_l0 + target_l0)
    store = training_store(model, hookpoint, domain, store, max_tokens, progress)
    # passed to every train and evaluate
    run = {"device": device, "progress": progress, "dtype": dtype}
    common = {"max_tokens": max_tokens, "seed": seed, **run, **train_options}
    saes = {"base": base}
    roles = {"base": ("base", 0)}
    for width in widths:
        name = f"base+{domain}_residual-w{width}"
        saes[name] = train_residual(
            base, store, width=width, kind=kind, name=domain, **{**common, **residual_option}
        )
        roles[name] = ("base+residual", width)
        if domain_only:
            total = base.cfg.width + width
            only = f"{domain}-only-w{total}"
            saes[only] = train_sae(store, kind=base.cfg.kind, width=total, **common, **only_option)
            roles[only] = ("domain-only", width)
    del store
    if out is not None:
        save_outputs(out, {name: sae for name, sae in saes.items() if name != "base"})
    tables = []
    for corpus in (domain, broad):
        scores = held_out_scores(
            saes, model, hookpoint, corpus, eval_max_tokens, linear=False, **run
        )
        scores["evaluated_on"] = corpus
        base_row = scores[scores["sae"] == "base"].iloc[0]
        for ratio in RATIO_COLUMNS:
            metric = ratio.removesuffix("_vs_base")
            scores[ratio] = scores[metric] / base_row[metric]
        tables.append(scores)
    table = pd.concat(tables, ignore_index=True)
    table["role"] = [roles[name][0] for name in table["sae"]]
    table["residual_width"] = [roles[name][1] for name in table["sae"]]
    table["total_width"] = base.cfg.width + table["residual_width"]
    table = table[[*SPEC_COLUMNS, *summary_metrics(table), *RATIO_COLUMNS]]
    if out is not None:
        save_outputs(out, table=table)
    return table
