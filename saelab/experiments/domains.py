"""Domain-specific versus broad SAEs: matched training and cross evaluation.

The domain-SAE claim (arXiv 2508.09363; docs/methods.md, "Linear residual error") is
that an SAE trained on domain text (e.g. medical) reconstructs that domain better than
one trained on broad text at the same width, target L0 and token budget, leaving a
smaller and more nonlinear error. `compare_domains` trains such matched pairs,
evaluates every SAE on held-out domain and held-out broad text, and returns one tidy
table; average it over seeds with `summarize(table, by=DOMAIN_GROUP)`.

Activations are harvested once per corpus and shared by all trainers of that corpus;
each evaluation set is evaluated in one `saelab.evaluate` call, so the clean and
ablated forward passes are shared by all SAEs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from saelab.experiments.common import held_out_scores, save_outputs, summary_metrics, training_store
from saelab.sae import sae_class
from saelab.train import train_sae

SPEC_COLUMNS = ["sae", "trained_on", "evaluated_on", "kind", "width", "seed", "target_l0"]
DOMAIN_GROUP = ["trained_on", "evaluated_on", "kind", "width", "target_l0"]  # all but the seed


def group_name(trained_on: str, kind: str, width: int, target_l0: float) -> str:
    """Name of one setting, shared by its seeds, e.g. `medical-jumprelu-w4608-l0_40`."""
    return f"{trained_on}-{kind}-w{width}-l0_{target_l0:g}"


def compare_domains(
    model,
    hookpoint: str,
    domain: str = "medical",
    broad: str = "broad",
    kinds=("jumprelu",),
    widths=(4608,),
    target_l0s=(40,),
    max_tokens: int = 200_000,
    eval_max_tokens: int = 8192,
    seeds=(0,),
    out: str | Path | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    **train_options,
) -> pd.DataFrame:
    """Train matched SAEs on `domain` and `broad` text and evaluate each on both held-out sets.

    For every corpus, kind, width, target L0 and seed one SAE is trained on the first
    `max_tokens` packed tokens of the corpus's train split (harvested once per corpus),
    the target set through the kind's own option (`k` for the TopK family, `target_l0`
    for JumpReLU, whose training defaults `train_sae` applies). `train_options` go to
    `saelab.train_sae`. Every SAE is then evaluated on `eval_max_tokens` tokens of each
    corpus's test split.

    Returns one row per (SAE, evaluation set): `SPEC_COLUMNS` and the `SUMMARY_METRICS`
    that `evaluate` reports. With `out`, each SAE is saved to `out/<sae>/` and the table
    to `out/table.csv`.
    """
    # Every kind must be able to set its L0 before an hour of harvesting and training starts.
    sparsity = {
        (kind, target_l0): sae_class(kind).sparsity_option(target_l0)
        for kind in kinds
        for target_l0 in target_l0s
    }
    if domain == broad:
        raise ValueError(f"the domain and broad corpora must differ; both are {domain!r}")
    # passed to every train and evaluate
    run = {"device": device, "progress": progress, "dtype": dtype}
    saes, specs = {}, {}
    for corpus in (domain, broad):
        store = training_store(model, hookpoint, corpus, None, max_tokens, progress)
        for kind in kinds:
            for width in widths:
                for target_l0 in target_l0s:
                    for seed in seeds:
                        name = f"{group_name(corpus, kind, width, target_l0)}-s{seed}"
                        options = {**train_options, **sparsity[kind, target_l0]}
                        sae = train_sae(store, kind=kind, width=width, seed=seed, **run, **options)
                        if out is not None:
                            save_outputs(out, {name: sae})
                        saes[name] = sae
                        specs[name] = {
                            "trained_on": corpus,
                            "kind": kind,
                            "width": width,
                            "seed": seed,
                            "target_l0": target_l0,
                        }
        del store
    specs_table = pd.DataFrame([{"sae": name, **spec} for name, spec in specs.items()])
    tables = []
    for corpus in (domain, broad):
        scores = held_out_scores(saes, model, hookpoint, corpus, eval_max_tokens, **run)
        tables.append(specs_table.merge(scores, on="sae").assign(evaluated_on=corpus))
    table = pd.concat(tables, ignore_index=True)
    table = table[[*SPEC_COLUMNS, *summary_metrics(table)]]
    if out is not None:
        save_outputs(out, table=table)
    return table
