"""Quality against sparsity and cost: HierarchicalTopK vs per-k TopK, KronSAE vs TopK.

`compare_hierarchical` trains one HierarchicalTopK SAE (top K = max k) and one TopK SAE
per k, all of one width on the same tokens, and evaluates the HierarchicalTopK SAE at
every k beside the TopK SAE trained there (arXiv 2505.24473's Pareto claim).
`compare_kron` trains KronSAE and TopK at equal width and k and reports quality next to
encoder cost (arXiv 2505.22255). Both return tidy tables; `pareto_figure` draws them.
Training data is a corpus name (harvested once) or an `ActivationStore` to reuse.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from saelab.activations import training_store
from saelab.data import load_corpus
from saelab.metrics import AtK, evaluate
from saelab.sae.kron import encoder_multiply_adds
from saelab.train import train_sae

METRICS = ["l0", "fvu", "explained_variance", "ce_loss_recovered", "delta_ce", "kl", "dead_fraction"]
HIERARCHICAL_COLUMNS = ["sae", "kind", "width", "k", *METRICS, "train_seconds"]
KIND_COLORS = {"topk": "#4c78a8", "kron": "#54a24b"}  # HierarchicalTopK variants: the default palette


def _timed_train(store, **options):
    start = time.perf_counter()
    sae = train_sae(store, **options)
    return sae, time.perf_counter() - start


def compare_hierarchical(model, hookpoint: str, train="medical", evaluate_on: str = "medical", width: int = 4608,
                         ks=(8, 16, 32, 64), k_sets=("all",), tokens: int = 200_000, eval_tokens: int = 8192,
                         seed: int = 0, out: str | Path | None = None, device=None, progress: bool = True,
                         **train_options) -> pd.DataFrame:
    """One HierarchicalTopK SAE (K = max(ks)) per loss set in `k_sets` vs a TopK SAE per k.

    `k_sets`: the `k_set` of each HierarchicalTopK SAE ("all", "geometric" or a list of k;
    see `HierarchicalTopKConfig`), its kind labelled `hierarchical_topk[<k_set>]`. All SAEs have `width`, see the same `tokens` tokens (same seed, so the same batches)
    and are evaluated in one `evaluate` call on `eval_tokens` tokens of `evaluate_on`'s
    test split: the HierarchicalTopK SAE once per k (`{name}@k{k}`), each TopK at its own
    k. Returns `HIERARCHICAL_COLUMNS`, one row per (SAE, k); `train_seconds` is the wall
    time of each training run (the HierarchicalTopK one is shared by its rows).
    """
    ks = sorted(int(k) for k in ks)
    store = training_store(model, hookpoint, train, tokens, device, progress)
    common = {"width": width, "tokens": tokens, "seed": seed, "device": device, "progress": progress, **train_options}
    saes, seconds, kinds, hierarchical = {}, {}, {}, {}
    for k_set in k_sets:
        label = f"hierarchical_topk[{k_set if isinstance(k_set, str) else '-'.join(map(str, k_set))}]"
        hier, hier_s = _timed_train(store, kind="hierarchical_topk", k=ks[-1], k_set=k_set, **common)
        hierarchical[f"{label}-w{width}-K{ks[-1]}"] = hier
        for k in ks:
            name = f"{label}-w{width}@k{k}"
            saes[name], seconds[name], kinds[name] = AtK(hier, k), hier_s, (label, k)
    for k in ks:
        name = f"topk-w{width}-k{k}"
        saes[name], seconds[name] = _timed_train(store, kind="topk", k=k, **common)
        kinds[name] = ("topk", k)
    if out is not None:
        out = Path(out)
        for name, hier in hierarchical.items():
            hier.save(out / name)
        for name, sae in saes.items():
            if kinds[name][0] == "topk":
                sae.save(out / name)
    table = evaluate(saes, model, hookpoint, load_corpus(evaluate_on, split="test"), max_tokens=eval_tokens,
                     linear=False, device=device, progress=progress)
    table["kind"] = [kinds[n][0] for n in table["sae"]]
    table["k"] = [kinds[n][1] for n in table["sae"]]
    table["width"] = width
    table["train_seconds"] = [seconds[n] for n in table["sae"]]
    table = table[HIERARCHICAL_COLUMNS]
    if out is not None:
        table.to_csv(out / "table.csv", index=False)
    return table


KRON_COLUMNS = ["sae", "kind", "width", "k", "heads", "m", "n", *METRICS, "encoder_multiply_adds",
                "encoder_cost_vs_topk", "train_seconds", "train_tokens_per_s"]


def compare_kron(model, hookpoint: str, train="medical", evaluate_on: str = "medical", widths=(4608, 18432),
                 k: int = 32, head_shapes=(None,), tokens: int = 200_000, eval_tokens: int = 8192, seed: int = 0,
                 out: str | Path | None = None, device=None, progress: bool = True, **train_options) -> pd.DataFrame:
    """KronSAE vs TopK at equal width and k: quality beside encoder cost and training speed.

    For each width: one TopK SAE and one KronSAE per `(m, n)` in `head_shapes` (None: the
    `kron_shape` default), all trained on the same `tokens` tokens with the same seed and
    evaluated in one `evaluate` call on `evaluate_on`'s test split. Returns `KRON_COLUMNS`:
    `encoder_multiply_adds` per token (h(m+n)d vs Fd), `encoder_cost_vs_topk` its ratio to
    the TopK SAE of that width, `train_tokens_per_s` = tokens / wall time of the training run
    (sequential runs on a shared machine: compare within one table).
    """
    store = training_store(model, hookpoint, train, tokens, device, progress)
    saes, seconds = {}, {}
    for width in widths:
        common = {"width": width, "tokens": tokens, "seed": seed, "device": device, "progress": progress,
                  "k": k, **train_options}
        saes[f"topk-w{width}"], seconds[f"topk-w{width}"] = _timed_train(store, kind="topk", **common)
        for shape in head_shapes:
            shape_options = {} if shape is None else {"m": shape[0], "n": shape[1]}
            sae, sec = _timed_train(store, kind="kron", **shape_options, **common)
            name = f"kron-w{width}-h{sae.cfg.heads}x{sae.cfg.m}x{sae.cfg.n}"
            saes[name], seconds[name] = sae, sec
    if out is not None:
        for name, sae in saes.items():
            sae.save(Path(out) / name)
    table = evaluate(saes, model, hookpoint, load_corpus(evaluate_on, split="test"), max_tokens=eval_tokens,
                     linear=False, device=device, progress=progress)
    cfgs = [saes[name].cfg for name in table["sae"]]
    table["kind"] = [c.kind for c in cfgs]
    table["width"] = [c.width for c in cfgs]
    table["k"] = [c.k for c in cfgs]
    table["heads"] = [getattr(c, "heads", 0) for c in cfgs]
    table["m"] = [getattr(c, "m", 0) for c in cfgs]
    table["n"] = [getattr(c, "n", 0) for c in cfgs]
    table["encoder_multiply_adds"] = [encoder_multiply_adds(saes[name]) for name in table["sae"]]
    topk_cost = {c.width: c.width * c.d_in for c in cfgs}
    table["encoder_cost_vs_topk"] = table["encoder_multiply_adds"] / table["width"].map(topk_cost)
    table["train_seconds"] = [seconds[name] for name in table["sae"]]
    table["train_tokens_per_s"] = tokens / table["train_seconds"]
    table = table[KRON_COLUMNS]
    if out is not None:
        table.to_csv(Path(out) / "table.csv", index=False)
    return table


def pareto_figure(table: pd.DataFrame, metric: str = "fvu", x: str = "l0") -> go.Figure:
    """`metric` against `x` (measured L0 by default), one line per (kind, width); hover shows the SAE."""
    if metric not in table.columns or x not in table.columns:
        raise ValueError(f"the table has no {metric!r} or {x!r} column; it has {list(table.columns)}")
    fig = go.Figure()
    for (kind, width), rows in table.groupby(["kind", "width"], sort=False):
        rows = rows.sort_values(x)
        fig.add_trace(go.Scatter(x=rows[x], y=rows[metric], mode="lines+markers", name=f"{kind} · w{width}",
                                 text=rows["sae"], line={"color": KIND_COLORS.get(kind)},
                                 marker={"size": 9, "symbol": "diamond" if width == table["width"].max() else "circle"}))
    better = "lower" if metric in ("fvu", "delta_ce", "kl", "dead_fraction") else "higher"
    fig.update_layout(title=f"{metric} vs {x} ({better} is better)", xaxis_title=x, yaxis_title=metric, height=420)
    return fig
