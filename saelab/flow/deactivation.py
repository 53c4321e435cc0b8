"""Causal deactivation: remove a target feature's predecessor on one token and see whether
the target goes out (docs/methods.md, "Cross-layer feature flow", step 5).

For a target feature `i` of `resid_post.L` firing on token `t`, a predecessor `(P, j)`
chosen by some method is rescaled at its own hookpoint on that token only,
`h_t <- h_t + (r - 1)·a_j·W_dec[j]` (`a_j` its code there: `r = 0` removes it up to SAE
error), the rest of the forward reruns, and the target's code is read again. Activation
change `AC = 1 - z_new / z_old`; success when `z_new` is 0. Methods pick the predecessor:
`top1_cosine` (the best of `match` over the three sources), `random_top5` (a random one of
that source's top 5), `top5` (all five removed), `top1_pearson` (the source feature whose
codes correlate best with the target's over the harvested tokens), `permutation` (SAE
Match: a one-to-one linear assignment on the residual decoders) and `exhaustive` (every
predecessor active on the token tried, the best kept; on the first `exhaustive_cases`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from saelab.activations import harvest
from saelab.features.stats import encode_codes
from saelab.flow.match import layer_saes, match
from saelab.flow.pickers import METHODS, method_picks
from saelab.interventions import Edit, logits, read_hookpoints
from saelab.models import model_device, parse_hookpoint
from saelab.sae import fires


class Case(NamedTuple):
    """One target feature firing on one harvested token."""

    row: int  # row of the aligned stores
    target: int  # target feature
    z_old: float  # its code there


class Layer(NamedTuple):
    """What deactivation needs of block `layer`, harvested once."""

    hookpoints: list[str]  # target, res, mlp, att
    saes: list  # their SAEs
    stores: list  # aligned ActivationStores
    codes: list[torch.Tensor]  # dense codes [N, F] of each, float32, CPU


@torch.no_grad()
def harvest_layer(model, saes: dict, layer: int, texts, max_tokens: int, ctx_len: int) -> Layer:
    """Aligned stores of the four hookpoints of block `layer` and every SAE's codes on them."""
    hooks, layer_sae_list = layer_saes(saes, layer)
    names = [hooks.target, *hooks.sources]
    stores = harvest(model, names, texts, max_tokens=max_tokens, ctx_len=ctx_len, progress=False)
    codes = []
    for name, sae in zip(names, layer_sae_list, strict=True):
        codes.append(encode_codes(sae, stores[name].get(torch.arange(len(stores[name])))))
    return Layer(names, layer_sae_list, [stores[n] for n in names], codes)


def pick_cases(layer: Layer, n_cases: int, seed: int = 0) -> list[Case]:
    """`n_cases` (token, firing target feature) pairs drawn at random (seeded)."""
    rows, feats = fires(layer.codes[0]).nonzero(as_tuple=True)
    if len(rows) == 0:
        raise ValueError("no target feature fires on the harvested tokens")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(rows), generator=g)[:n_cases].sort().values
    return [
        Case(int(rows[k]), int(feats[k]), float(layer.codes[0][rows[k], feats[k]])) for k in pick
    ]


def edited_batches(model, layer: Layer, cases: list[Case], picks, r: float, batch_size: int):
    """(case indices, ids `[B, T]`, positions `[B]`, the `Edit`) per batch: each batch row is
    its own copy of a case's context, edited on the case's token only, by
    `(r - 1)·Σ_j a_j·W_dec[j]` over the picked predecessors `(source p, features)`."""
    device = model_device(model)  # the SAEs may live elsewhere: the edit moves its rows
    for p in sorted({p for p, _ in picks}):
        idx = [k for k, (pk, _) in enumerate(picks) if pk == p]
        sae, store, codes = layer.saes[p + 1], layer.stores[p + 1], layer.codes[p + 1]
        hookpoint = parse_hookpoint(model, layer.hookpoints[p + 1])
        for start in range(0, len(idx), batch_size):
            ks = idx[start : start + batch_size]
            rows = torch.tensor([cases[k].row for k in ks])
            pos = store.position_N[rows].long()
            ids_BT = store.tokens_CT[store.context_N[rows].long()].to(device)
            W_dec_FD = sae.W_dec_FD.detach()
            delta_BD = torch.stack(
                [
                    (r - 1) * codes[cases[k].row, picks[k][1]].to(W_dec_FD) @ W_dec_FD[picks[k][1]]
                    for k in ks
                ]
            )
            at_BT = torch.zeros(ids_BT.shape, dtype=torch.bool)
            at_BT[torch.arange(len(ks)), pos] = True
            edit = Edit(hookpoint, lambda rows_ND, d=delta_BD: rows_ND + d.to(rows_ND), at_BT)
            yield ks, ids_BT, pos, edit


@torch.no_grad()
def target_after(model, layer: Layer, cases: list[Case], picks, r: float, batch_size: int = 16):
    """`z_new` `[len(cases)]`: the target's code on each case's token after rescaling the
    picked predecessors `(source p, features)` by `r` there."""
    out = torch.zeros(len(cases))
    for ks, ids_BT, pos, edit in edited_batches(model, layer, cases, picks, r, batch_size):
        h_BTD = read_hookpoints(model, [layer.hookpoints[0]], ids_BT, [edit])[0]
        f_BF = encode_codes(layer.saes[0], h_BTD[torch.arange(len(ks)), pos.to(h_BTD.device)])
        targets = torch.tensor([cases[k].target for k in ks])
        out[ks] = f_BF[torch.arange(len(ks)), targets]
    return out


@torch.no_grad()
def ce_after(model, layer: Layer, cases: list[Case], picks, r: float, batch_size: int = 16):
    """Mean next-token CE `[len(cases)]` of each case's context with the edit on its token."""
    out = torch.zeros(len(cases), dtype=torch.float64)
    for ks, ids_BT, _, edit in edited_batches(model, layer, cases, picks, r, batch_size):
        lp_BTV = torch.log_softmax(logits(model, ids_BT, [edit])[:, :-1].double(), dim=-1)
        out[ks] = -lp_BTV.gather(-1, ids_BT[:, 1:, None]).squeeze(-1).mean(1).cpu()
    return out


def exhaustive_picks(model, layer: Layer, cases: list[Case], r: float, batch_size: int = 16):
    """For each case, the single active predecessor (any source) whose removal lowers the
    target's code the most, and that lowest code."""
    picks, z_best = [], []
    for case in cases:
        candidates = [
            (p, [int(j)])
            for p in range(3)
            for j in fires(layer.codes[p + 1][case.row]).nonzero().flatten()
        ]
        if not candidates:
            picks.append((0, []))
            z_best.append(case.z_old)
            continue
        z_new = target_after(model, layer, [case] * len(candidates), candidates, r, batch_size)
        best = int(z_new.argmin())
        picks.append(candidates[best])
        z_best.append(float(z_new[best]))
    return picks, torch.tensor(z_best)


def deactivation(
    model,
    saes: dict,
    layer: int,
    texts,
    max_tokens: int = 4096,
    ctx_len: int = 128,
    n_cases: int = 128,
    r: float = 0.0,
    methods=METHODS,
    exhaustive_cases: int = 16,
    batch_size: int = 16,
    seed: int = 0,
):
    """AC and success of each predecessor-choosing method on the same random cases.

    Returns a tidy pandas table, one row per (method, case): method, row, context, position,
    target, source (hookpoint), features (removed), z_old, z_new, ac, success. `exhaustive`
    runs on the first `exhaustive_cases` cases only (one forward per active predecessor).
    `summarize_deactivation` gives the per-method means.
    """
    import pandas as pd

    data = harvest_layer(model, saes, layer, texts, max_tokens, ctx_len)
    cases = pick_cases(data, n_cases, seed)
    flow_match = match(saes, layer)
    rows = []
    for method in methods:
        if method == "exhaustive":
            subset = cases[:exhaustive_cases]
            picks, z_new = exhaustive_picks(model, data, subset, r, batch_size)
        else:
            subset = cases
            picks = method_picks(method, data, cases, flow_match, seed)
            z_new = target_after(model, data, cases, picks, r, batch_size)
        store = data.stores[0]
        for case, (p, feats), z in zip(subset, picks, z_new.tolist(), strict=True):
            rows.append(
                {
                    "method": method,
                    "row": case.row,
                    "context": int(store.context_N[case.row]),
                    "position": int(store.position_N[case.row]),
                    "target": case.target,
                    "source": data.hookpoints[p + 1],
                    "features": feats,
                    "z_old": case.z_old,
                    "z_new": z,
                    "ac": 1 - z / case.z_old,
                    "success": z == 0,
                }
            )
    return pd.DataFrame(rows)


def summarize_deactivation(table):
    """Per method: cases, mean activation change and success rate."""
    summary = table.groupby("method", sort=False).agg(
        n_cases=("ac", "size"), ac=("ac", "mean"), success_rate=("success", "mean")
    )
    return summary.reset_index()


def deactivation_sweep(
    model,
    saes: dict,
    layer: int,
    texts,
    rs=(-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.0),
    max_tokens: int = 4096,
    ctx_len: int = 128,
    n_cases: int = 64,
    batch_size: int = 16,
    seed: int = 0,
):
    """The top-1 cosine predecessor rescaled by each `r`: mean AC, success rate and the
    relative change of the context's CE, `(CE_r - CE_1) / CE_1` (r = 1 is the clean run).
    One row per r."""
    import pandas as pd

    data = harvest_layer(model, saes, layer, texts, max_tokens, ctx_len)
    cases = pick_cases(data, n_cases, seed)
    picks = method_picks("top1_cosine", data, cases, match(saes, layer), seed)
    z_old = torch.tensor([c.z_old for c in cases])
    ce_clean = ce_after(model, data, cases, picks, 1.0, batch_size)
    rows = []
    for r in rs:
        z_new = target_after(model, data, cases, picks, r, batch_size)
        ce = ce_after(model, data, cases, picks, r, batch_size)
        rows.append(
            {
                "r": r,
                "n_cases": len(cases),
                "ac": float((1 - z_new / z_old).mean()),
                "success_rate": float((z_new == 0).double().mean()),
                "relative_ce_change": float(((ce - ce_clean) / ce_clean).mean()),
            }
        )
    return pd.DataFrame(rows)
