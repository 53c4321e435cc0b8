"""What `saelab flow` writes and prints: the groups and deactivation tables, the report (group
shares beside the null, deactivation per layer, an example flow graph) and a text summary.

`groups.csv` has one row per (layer, null, group): `layer`, `null` (True for the
shuffled-decoder baseline, as `PredecessorGroups.null`), `group`, `count`, `share` (of the
layer's (token, firing feature) pairs; sums to 1 per layer and null), `n_pairs`, `n_tokens`,
`exact_agreement` and `max_split_error` (the exact three-part split; NaN with --no-exact).
`deactivation.csv` is `saelab.flow.deactivation`'s table with a leading `layer` column.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from saelab.io import write_table


def groups_table(observed: list, null: list) -> pd.DataFrame:
    """One row per (layer, null, group) of the `PredecessorGroups` results."""
    rows = []
    for pair in zip(observed, null, strict=True):
        for res in pair:
            for g, group in enumerate(res.groups):
                rows.append(
                    {
                        "layer": res.layer,
                        "null": res.null,
                        "group": group,
                        "count": int(res.counts_G[g]),
                        "share": float(res.shares_G[g]),
                        "n_pairs": res.n_pairs,
                        "n_tokens": res.n_tokens,
                        "exact_agreement": _number(res.exact_agreement),
                        "max_split_error": _number(res.max_split_error),
                    }
                )
    return pd.DataFrame(rows)


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def deactivation_table(deactivation: dict) -> pd.DataFrame:
    """The per-layer deactivation tables stacked, `layer` first."""
    tables = [table.assign(layer=layer) for layer, table in deactivation.items()]
    if not tables:
        return pd.DataFrame({"layer": []})
    table = pd.concat(tables, ignore_index=True)
    return table[["layer", *[c for c in table.columns if c != "layer"]]]


def example_graph(saes: dict, model, stores: dict, observed: list, layer: int, layers):
    """The flow graph of the feature of `resid_post.{layer}` with the most firing pairs on
    the held-out tokens (an example to open the report's graph on), with label material."""
    from saelab import flow

    res = next(r for r in observed if r.layer == layer)
    feature = int(res.counts_FG.sum(1).argmax())
    graph = flow.flow_graph(saes, ("resid_post", layer, feature), layers=layers)
    return flow.attach_labels(graph, saes, model, stores)


def write_outputs(args, model, saes, stores, observed, null, deactivation) -> dict[str, Path]:
    """Write groups.csv, deactivation.csv and report.html under `args.out`; their paths."""
    from saelab import figures, flow

    out = Path(args.out)
    layers = [res.layer for res in observed]
    paths = {"groups": write_table(groups_table(observed, null), out / "groups.csv")}
    paths["deactivation"] = write_table(deactivation_table(deactivation), out / "deactivation.csv")
    paths["saes"] = out / "saes" if args.saes is None else Path(args.saes)
    seed_layer = next(iter(deactivation), layers[len(layers) // 2])
    graph = example_graph(saes, model, stores, observed, seed_layer, layers)
    settings = {
        "model": args.model,
        "layers": f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0]),
        "SAEs": str(paths["saes"]),
        "held-out tokens": observed[0].n_tokens,
        "deactivation cases": args.cases,
    }
    run_table = figures.metrics_table(settings)
    run_table.update_layout(title="Run")
    report = [run_table, figures.group_shares_figure(observed, null)]
    for layer, table in deactivation.items():
        fig = figures.deactivation_figure(flow.summarize_deactivation(table))
        report.append(fig.update_layout(title=f"Deactivating a predecessor, layer {layer}"))
    report.append(figures.flow_graph_figure(graph))
    notes = (
        f"{args.model}, blocks {layers}: predecessor groups on {observed[0].n_tokens:,} "
        f"held-out {args.corpus} tokens beside the shuffled-decoder null; deactivation at "
        f"layers {list(deactivation)}; the example flow graph grows from the resid_post."
        f"{seed_layer} feature that fires most often (docs/methods.md, 'Cross-layer feature "
        "flow')."
    )
    paths["report"] = figures.write_report(out / "report.html", "saelab flow", report, notes)
    return paths


def shares_text(observed: list, null: list) -> str:
    """The group shares (%) per layer, observed and null rows, and the exact agreement."""
    table = groups_table(observed, null)
    table["row"] = [
        f"layer {layer} {'null' if is_null else 'real'}"
        for layer, is_null in zip(table["layer"], table["null"], strict=True)
    ]
    wide = table.pivot(index="row", columns="group", values="share")
    wide = (100 * wide[list(observed[0].groups)]).round(1)
    wide = wide.loc[list(dict.fromkeys(table["row"]))]  # layer order, real before null
    agreement = table.groupby("row", sort=False)["exact_agreement"].first()
    wide["exact %"] = (100 * agreement).round(1)
    return wide.rename_axis(index=None, columns=None).to_string()


def print_summary(observed, null, deactivation: dict, phases, paths: dict) -> None:
    """Group shares, the deactivation summary per layer, wall times and where files are."""
    from saelab import flow

    print("\npredecessor groups (% of (token, firing feature) pairs):")
    print(shares_text(observed, null))
    for layer, table in deactivation.items():
        print(f"\ndeactivation at layer {layer}:")
        print(flow.summarize_deactivation(table).to_string(index=False, float_format="%.3f"))
    print("\n" + phases.table())
    for name, path in paths.items():
        print(f"[saelab] {name + ':':<13} {path}")
