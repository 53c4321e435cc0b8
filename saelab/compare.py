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

from saelab.activations import harvest, training_store
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


# --- residual SAEs (Koriagin et al., arXiv 2507.12990) -------------------------------------
RESIDUAL_METRICS = ["l0", "explained_variance", "fvu", "ce_loss_recovered", "delta_ce", "kl", "dead_fraction"]
RESIDUAL_COLUMNS = ["sae", "role", "residual_width", "total_width", "evaluated_on", *RESIDUAL_METRICS,
                    "ce_loss_recovered_vs_base", "explained_variance_vs_base"]


def l0_target_of(sae) -> float | None:
    """The L0 an SAE was asked for: JumpReLU's target_l0 or TopK's k (None if it has neither)."""
    return getattr(sae.cfg, "target_l0", None) or getattr(sae.cfg, "k", None)


def compare_residual(model, hookpoint: str, base, domain: str = "medical", broad: str = "broad",
                     widths=(1152, 2304, 4608), kind: str = "topk", k: int = 16, tokens: int = 200_000,
                     eval_tokens: int = 8192, domain_only: bool = True, seed: int = 0, train=None,
                     out: str | Path | None = None, device=None, progress: bool = True,
                     **train_options) -> pd.DataFrame:
    """Base vs base + residual vs a domain-only SAE, on held-out domain and broad text.

    `base` is a frozen SAE (typically a broad one from `compare_domains`). For each width
    in `widths` a residual SAE of `kind` (L0 `k`) is trained with `saelab.train_residual`
    on the first `tokens` tokens of `domain`'s train split (harvested once). With
    `domain_only`, a `base.cfg.kind` SAE of the same total width and total L0 target
    (`base`'s target + `k`) is trained from scratch on the same tokens. Everything is
    evaluated on `eval_tokens` tokens of each test split. `train`: an `ActivationStore` of
    domain text to train on instead of harvesting one.

    Returns one row per (SAE, evaluation set): `RESIDUAL_COLUMNS`, with `role` one of base,
    base+residual, domain-only and `*_vs_base` the ratio to the base on that evaluation
    set (broad `ce_loss_recovered_vs_base` >= 0.99 is the paper's retention claim). With
    `out`, SAEs go to `out/<sae>/` and the table to `out/table.csv`.
    """
    from saelab.train import train_residual

    base_target = l0_target_of(base)
    if domain_only and base_target is None:
        raise ValueError(f"a {base.cfg.kind} base has no L0 target to match; pass domain_only=False")
    out = Path(out) if out is not None else None
    store = training_store(model, hookpoint, train if train is not None else domain, tokens, device, progress)
    saes = {"base": base}
    roles = {"base": ("base", 0)}
    for width in widths:
        name = f"base+{domain}_residual-w{width}"
        saes[name] = train_residual(base, store, width=width, kind=kind, name=domain, tokens=tokens, seed=seed,
                                    device=device, progress=progress, **{**train_options, **kind_options(kind, k)})
        roles[name] = ("base+residual", width)
        if domain_only:
            total = base.cfg.width + width
            only = f"{domain}-only-w{total}"
            defaults = JUMPRELU_DEFAULTS if base.cfg.kind == "jumprelu" else {}
            saes[only] = train_sae(store, kind=base.cfg.kind, width=total, tokens=tokens, seed=seed, device=device,
                                   progress=progress, **{**defaults, **train_options},
                                   **kind_options(base.cfg.kind, base_target + k))
            roles[only] = ("domain-only", width)
    del store
    if out is not None:
        for name, sae in saes.items():
            if name != "base":
                sae.save(out / name)
    tables = []
    for corpus in (domain, broad):
        scores = evaluate(saes, model, hookpoint, load_corpus(corpus, split="test"), max_tokens=eval_tokens,
                          linear=False, device=device, progress=progress)
        scores["evaluated_on"] = corpus
        base_row = scores[scores["sae"] == "base"].iloc[0]
        scores["ce_loss_recovered_vs_base"] = scores["ce_loss_recovered"] / base_row["ce_loss_recovered"]
        scores["explained_variance_vs_base"] = scores["explained_variance"] / base_row["explained_variance"]
        tables.append(scores)
    table = pd.concat(tables, ignore_index=True)
    table["role"] = [roles[name][0] for name in table["sae"]]
    table["residual_width"] = [roles[name][1] for name in table["sae"]]
    table["total_width"] = base.cfg.width + table["residual_width"]
    table = table[RESIDUAL_COLUMNS]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "table.csv", index=False)
    return table


def retention_figure(table: pd.DataFrame, domain: str = "medical", broad: str = "broad",
                     gain: str = "ce_loss_recovered") -> go.Figure:
    """Domain gain vs general retention: each SAE's `gain` metric on `domain` text minus the
    base's (y) against its broad CE loss recovered as a share of the base's (x)."""
    dom = table[table["evaluated_on"] == domain].set_index("sae")
    gen = table[table["evaluated_on"] == broad].set_index("sae")
    if dom.empty or gen.empty:
        raise ValueError(f"the table needs rows evaluated on {domain!r} and {broad!r}")
    base_gain = dom.loc[dom["role"] == "base", gain].iloc[0]
    fig = go.Figure()
    styles = {"base": ("#888888", "circle"), "base+residual": ("#e45756", "diamond"),
              "domain-only": ("#4c78a8", "square")}
    for role, (color, symbol) in styles.items():
        names = dom.index[dom["role"] == role]
        if len(names) == 0:
            continue
        fig.add_trace(go.Scatter(
            x=100 * gen.loc[names, "ce_loss_recovered_vs_base"], y=dom.loc[names, gain] - base_gain,
            mode="markers+text", name=role, text=[f"+{w}" if w else "" for w in dom.loc[names, "residual_width"]],
            textposition="top center", marker={"color": color, "symbol": symbol, "size": 11},
            hovertext=list(names)))
    fig.add_vline(x=99, line_dash="dot", annotation_text="99% of base")
    fig.update_layout(title=f"{domain} gain vs {broad} retention", height=420,
                      xaxis_title=f"{broad} CE loss recovered, % of the base SAE's",
                      yaxis_title=f"{domain} {gain}: gain over the base SAE")
    return fig


def redundancy_figure(redundancy, block: str = "residual", reference: str = "base") -> go.Figure:
    """Histograms of each `block` decoder row's largest |cosine| with the `reference` rows,
    beside the reference's own nearest-neighbour cosines (`features.decoder_redundancy`)."""
    fig = go.Figure()
    for values, name, color in ((redundancy.reference_F, f"{reference} row vs other {reference} rows", "#888888"),
                                (redundancy.block_F, f"{block} row vs {reference} rows", "#e45756")):
        fig.add_trace(go.Histogram(x=values.tolist(), name=name, marker_color=color, opacity=0.6,
                                   histnorm="probability", xbins={"start": 0, "end": 1, "size": 0.02}))
    fig.update_layout(barmode="overlay", height=380, title=f"Decoder redundancy: {block} vs {reference}",
                      xaxis_title="largest |cosine| with a reference decoder row", yaxis_title="share of rows")
    return fig
