"""What every comparison shares: the training store, timed training, the seed summary, saving.

`summarize` is the one seed summary in saelab: the experiments' tables, the metrics
dashboard and the figures all average over seeds with it (mean and sample std, ddof 1).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from saelab.activations import ActivationStore, harvest
from saelab.data import load_corpus
from saelab.io import write_table
from saelab.metrics import SUMMARY_METRICS, evaluate
from saelab.train import train_sae


def training_store(
    model,
    hookpoint: str,
    corpus: str,
    store: ActivationStore | None = None,
    max_tokens: int = 200_000,
    progress: bool = True,
) -> ActivationStore:
    """`store` if given (it must hold `hookpoint`), else the first `max_tokens` packed tokens
    of `corpus`'s train split, harvested at `hookpoint` on the model's own device (the
    experiments' `device` is where the SAEs train and run, which may be another)."""
    if store is not None:
        if store.info.hookpoint and store.info.hookpoint != hookpoint:
            raise ValueError(f"the store holds {store.info.hookpoint}, not {hookpoint}")
        return store
    texts = load_corpus(corpus, split="train")
    return harvest(model, hookpoint, texts, max_tokens=max_tokens, progress=progress)


def held_out_scores(
    saes, model, hookpoint: str, corpus: str, eval_max_tokens: int, **evaluate_options
):
    """`saelab.evaluate` of `saes` on the first `eval_max_tokens` tokens of `corpus`'s test
    split."""
    texts = load_corpus(corpus, split="test")
    return evaluate(saes, model, hookpoint, texts, max_tokens=eval_max_tokens, **evaluate_options)


def timed_train(store, **train_options):
    """`train_sae(store, **train_options)` and the wall time of the run in seconds."""
    start = time.perf_counter()
    sae = train_sae(store, **train_options)
    return sae, time.perf_counter() - start


def summary_metrics(table: pd.DataFrame) -> list[str]:
    """The `SUMMARY_METRICS` columns that `table` has, in that order."""
    return [metric for metric in SUMMARY_METRICS if metric in table.columns]


def summarize(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean and sample std (ddof 1; NaN for a group of one row) of each metric per group.

    One row per group of the `by` columns (in order of first appearance) with those
    columns, `n_seeds` (rows in the group) and `<metric>_mean`, `<metric>_std` for each
    of `SUMMARY_METRICS` that the table has.
    """
    by = list(by)
    missing = [column for column in by if column not in table.columns]
    if missing:
        raise ValueError(f"the table has no column {missing}; it has {list(table.columns)}")
    grouped = table.groupby(by, sort=False)[summary_metrics(table)]
    stats = grouped.agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    stats.insert(0, "n_seeds", grouped.size())
    return stats.reset_index()


def save_outputs(
    out: str | Path, saes: dict | None = None, table: pd.DataFrame | None = None
) -> Path:
    """Save each SAE to `out/<name>/` and the table to `out/table.csv` (both atomically)."""
    out = Path(out)
    for name, sae in (saes or {}).items():
        sae.save(out / name)
    if table is not None:
        write_table(table, out / "table.csv")
    return out
