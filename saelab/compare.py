"""Domain-specific versus broad SAEs: matched training, cross evaluation, figures.

The domain-SAE claim (METHODS.md, arXiv 2508.09363) is that an SAE trained on domain
text (e.g. medical) reconstructs that domain better than one trained on broad text at
the same width, target L0 and token budget, leaving a smaller and more nonlinear error.
`compare_domains` trains such matched pairs, evaluates every SAE on held-out domain and
held-out broad text, and returns one tidy table; `pareto_figure`, `ce_figure` and
`error_bars_figure` draw it, averaging over seeds with `summarize`.

Activations are harvested once per corpus and shared by all trainers of that corpus;
each evaluation set is evaluated in one `saelab.metrics.evaluate` call, so the clean and
ablated forward passes are shared by all SAEs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from saelab.activations import harvest
from saelab.data import load_corpus
from saelab.metrics import evaluate
from saelab.train import train_sae

KINDS = ("jumprelu", "topk", "batchtopk")
# Settings that reach the target L0 in short JumpReLU runs (measured); train_options override them.
JUMPRELU_DEFAULTS = {"batch_size": 256, "lr": 1e-3}
METRICS = ["l0", "explained_variance", "fvu", "ce_loss_recovered", "delta_ce", "kl",
           "linear_error_r2", "linear_error_fvu", "nonlinear_error_fvu", "dead_fraction"]
COLUMNS = ["sae", "trained_on", "evaluated_on", "kind", "width", "seed", "l0_target", *METRICS]
GROUP = ["trained_on", "evaluated_on", "kind", "width", "l0_target"]  # everything but the seed
WIDTH_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "star"]
KIND_DASHES = ["solid", "dash", "dot", "dashdot"]
CORPUS_COLORS = ["#e45756", "#4c78a8", "#54a24b", "#f58518"]  # by training corpus, domain first


def kind_options(kind: str, l0_target: float) -> dict:
    """The `train_sae` option that asks `kind` for L0 `l0_target`: target_l0 (JumpReLU) or k (TopK)."""
    if kind == "jumprelu":
        return {"target_l0": l0_target}
    if kind in ("topk", "batchtopk"):
        return {"k": int(l0_target)}
    raise ValueError(f"compare_domains sets the L0 of kinds {KINDS}; got kind {kind!r}")


def group_name(trained_on: str, kind: str, width: int, l0_target: float) -> str:
    """Name of one setting, shared by its seeds, e.g. `medical-jumprelu-w4608-l0_40`."""
    return f"{trained_on}-{kind}-w{width}-l0_{l0_target:g}"


def compare_domains(model, hookpoint: str, domain: str = "medical", broad: str = "broad",
                    kinds=("jumprelu",), widths=(4608,), l0_targets=(40,), tokens: int = 200_000,
                    eval_tokens: int = 8192, seeds=(0,), out: str | Path | None = None, device=None,
                    progress: bool = True, **train_options) -> pd.DataFrame:
    """Train matched SAEs on `domain` and `broad` text and evaluate each on both held-out sets.

    For every corpus, kind, width, L0 target and seed one SAE is trained on the first
    `tokens` packed tokens of the corpus's train split (harvested once per corpus), with
    the target given as `target_l0` (JumpReLU; default batch_size 256, lr 1e-3) or `k`
    (TopK, BatchTopK). `train_options` go to `saelab.train_sae`. Every SAE is then
    evaluated on `eval_tokens` tokens of each corpus's test split.

    Returns one row per (SAE, evaluation set) with `COLUMNS`. With `out`, each SAE is saved
    to `out/<sae>/` and the table to `out/table.csv`.
    """
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise ValueError(f"compare_domains sets the L0 of kinds {KINDS}; got {unknown}")
    if domain == broad:
        raise ValueError(f"the domain and broad corpora must differ; both are {domain!r}")
    out = Path(out) if out is not None else None
    saes, specs = {}, {}
    for corpus in (domain, broad):
        store = harvest(model, hookpoint, load_corpus(corpus, split="train"), max_tokens=tokens,
                        device=device, progress=progress)
        for kind in kinds:
            defaults = JUMPRELU_DEFAULTS if kind == "jumprelu" else {}
            for width in widths:
                for l0_target in l0_targets:
                    for seed in seeds:
                        name = f"{group_name(corpus, kind, width, l0_target)}-s{seed}"
                        sae = train_sae(store, kind=kind, width=width, seed=seed, device=device, progress=progress,
                                        **{**defaults, **train_options}, **kind_options(kind, l0_target))
                        if out is not None:
                            sae.save(out / name)
                        saes[name] = sae
                        specs[name] = {"trained_on": corpus, "kind": kind, "width": width, "seed": seed,
                                       "l0_target": l0_target}
        del store
    specs_table = pd.DataFrame([{"sae": name, **spec} for name, spec in specs.items()])
    tables = []
    for corpus in (domain, broad):
        scores = evaluate(saes, model, hookpoint, load_corpus(corpus, split="test"), max_tokens=eval_tokens,
                          device=device, progress=progress)
        tables.append(specs_table.merge(scores, on="sae").assign(evaluated_on=corpus))
    table = pd.concat(tables, ignore_index=True)[COLUMNS]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "table.csv", index=False)
    return table


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof 1; NaN for one seed) of every metric over seeds.

    One row per (trained_on, evaluated_on, kind, width, l0_target) with `sae` the setting's
    name, `n_seeds`, and `<metric>_mean`, `<metric>_std` for each of `METRICS`.
    """
    grouped = table.groupby(GROUP, sort=False)[METRICS]
    stats = grouped.agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    stats.insert(0, "n_seeds", grouped.size())
    stats = stats.reset_index()
    stats.insert(0, "sae", [group_name(r.trained_on, r.kind, r.width, r.l0_target) for r in stats.itertuples()])
    return stats


def _panels(summary: pd.DataFrame, evaluated_on: str | None) -> list[str]:
    """Evaluation sets to draw: the one asked for, or all (one panel each)."""
    available = list(dict.fromkeys(summary["evaluated_on"]))
    if evaluated_on is None:
        return available
    if evaluated_on not in available:
        raise ValueError(f"no rows evaluated on {evaluated_on!r}; the table has {available}")
    return [evaluated_on]


def _std(values: pd.Series) -> list[float]:
    """Error bar half-widths: the std, 0 where there is only one seed."""
    return values.fillna(0.0).tolist()


def _metric_vs_l0(table: pd.DataFrame, metric: str, evaluated_on: str | None, title: str) -> go.Figure:
    """`metric` against measured L0, one line per (trained_on, kind, width), one panel per evaluation set."""
    summary = summarize(table)
    panels = _panels(summary, evaluated_on)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[f"evaluated on {p}" for p in panels])
    colors = {c: CORPUS_COLORS[i % len(CORPUS_COLORS)] for i, c in enumerate(dict.fromkeys(summary["trained_on"]))}
    symbols = {w: WIDTH_SYMBOLS[i % len(WIDTH_SYMBOLS)] for i, w in enumerate(sorted(summary["width"].unique()))}
    dashes = {k: KIND_DASHES[i % len(KIND_DASHES)] for i, k in enumerate(dict.fromkeys(summary["kind"]))}
    for col, panel in enumerate(panels, start=1):
        lines = summary[summary["evaluated_on"] == panel].groupby(["trained_on", "kind", "width"], sort=False)
        for (trained_on, kind, width), line in lines:
            line = line.sort_values("l0_mean")
            label = f"{trained_on} · {kind} · w{width}"
            fig.add_trace(go.Scatter(
                x=line["l0_mean"], y=line[f"{metric}_mean"], mode="lines+markers", name=label, legendgroup=label,
                showlegend=col == 1, text=line["sae"],
                error_x={"type": "data", "array": _std(line["l0_std"]), "visible": True, "thickness": 1},
                error_y={"type": "data", "array": _std(line[f"{metric}_std"]), "visible": True, "thickness": 1},
                line={"color": colors[trained_on], "dash": dashes[kind]}, marker={"symbol": symbols[width], "size": 9},
            ), row=1, col=col)
        fig.update_xaxes(title_text="L0 (measured)", row=1, col=col)
    fig.update_yaxes(title_text=metric, row=1, col=1)
    fig.update_layout(title=title, height=420, legend_title_text="trained on · kind · width")
    return fig


def pareto_figure(table: pd.DataFrame, metric: str = "fvu", evaluated_on: str | None = None) -> go.Figure:
    """`metric` vs measured L0 for domain and broad SAEs (marker = width): the paper's main figure.

    `evaluated_on` picks one evaluation set; None draws one panel per set. With several
    seeds, points are means with std error bars (`summarize`).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")
    return _metric_vs_l0(table, metric, evaluated_on, f"{metric} vs L0: domain vs broad SAEs")


def ce_figure(table: pd.DataFrame, evaluated_on: str | None = None) -> go.Figure:
    """CE loss recovered vs measured L0, one line per training corpus and width."""
    return _metric_vs_l0(table, "ce_loss_recovered", evaluated_on, "CE loss recovered vs L0")


def error_bars_figure(table: pd.DataFrame, evaluated_on: str | None = None) -> go.Figure:
    """Linear and nonlinear error FVU stacked per SAE setting ("dark matter", Engels et al.)."""
    summary = summarize(table)
    panels = _panels(summary, evaluated_on)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[f"evaluated on {p}" for p in panels])
    parts = [("linear_error_fvu", "linear error", "#4c78a8"), ("nonlinear_error_fvu", "nonlinear error", "#e45756")]
    for col, panel in enumerate(panels, start=1):
        rows = summary[summary["evaluated_on"] == panel]
        for metric, label, color in parts:
            fig.add_trace(go.Bar(
                x=rows["sae"], y=rows[f"{metric}_mean"], name=label, legendgroup=label, showlegend=col == 1,
                marker_color=color, error_y={"type": "data", "array": _std(rows[f"{metric}_std"]), "visible": True},
            ), row=1, col=col)
    fig.update_yaxes(title_text="share of activation variance (FVU)", row=1, col=1)
    fig.update_layout(title="SAE error: linearly predictable vs nonlinear part", barmode="stack", height=460)
    return fig
