"""Predecessor groups: on each token where a target feature fires, which matched sources fire.

Step 3 of cross-layer feature flow (docs/methods.md, "Cross-layer feature flow"). For a
token where feature `i` of `resid_post.L` fires, its group is `S = {P : z^P_{j_P(i)} > 0}`
over the three sources P (res = `resid_post.{L-1}`, mlp = `mlp_out.L`, att = `attn_out.L`),
one of the eight labels in `GROUPS`. This needs the four positions' codes on the same
tokens: the stores of one multi-hookpoint `saelab.harvest` (identical rows).

The exact check: in a Llama-style model without post-norms `R_L = R_{L-1} + A_L + M_L`,
so the linear part of the target's pre-activation, `e_i·R_L`, splits into the three
sources' parts `e_i·R_{L-1} + e_i·A_L + e_i·M_L`; the largest part should be in `S`.
Shapes in names: B rows of a batch, F target features, M (row, firing feature) pairs,
P the three sources, G the eight groups.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from saelab.features.stats import sae_placement
from saelab.flow.match import FlowMatch, layer_saes, match
from saelab.sae import fires

GROUPS = (
    "From RES",
    "From MLP",
    "From ATT",
    "RES & MLP",
    "RES & ATT",
    "MLP & ATT",
    "RES & MLP & ATT",
    "From nowhere",
)
# The sources that fire in each group as bits (res 1, mlp 2, att 4), in GROUPS order.
CODE_OF_GROUP = torch.tensor([1, 2, 4, 3, 5, 6, 7, 0])
GROUP_OF_CODE = CODE_OF_GROUP.argsort()  # bit code -> index into GROUPS
IN_GROUP_GP = (CODE_OF_GROUP[:, None] >> torch.arange(3)) & 1 == 1  # [8, 3] source P in S
AFFINE_RTOL = 1e-2  # a non-affine encoder (KronSAE's mAND) misses additivity by O(1) of scale


class PredecessorGroups(NamedTuple):
    """Group counts over every (token, firing target feature) pair (`predecessor_groups`)."""

    layer: int
    groups: tuple[str, ...]  # the eight labels: the G axis
    null: bool  # True: the shuffled-decoder baseline (matched indices permuted)
    n_tokens: int  # store rows read
    n_pairs: int  # (token, firing target feature) pairs
    counts_G: torch.Tensor  # [8] int64 pairs per group; sums to n_pairs
    shares_G: torch.Tensor  # [8] float64 counts_G / n_pairs
    counts_FG: torch.Tensor  # [F, 8] int64 pairs per target feature and group
    index_FP: torch.Tensor  # [F, 3] int64 the source features used (permuted when null)
    # Exact check (None with exact=False): pairs by group and by the largest of the three
    # parts e_i·x_P; the share of pairs with a non-empty S whose largest part is in S; and
    # max |e_i·R_L - (e_i·R_{L-1} + e_i·M_L + e_i·A_L)| over the pairs.
    largest_GP: torch.Tensor | None  # [8, 3] int64
    exact_agreement: float | None
    max_split_error: float | None


def check_aligned(stores: dict, names: list[str]) -> None:
    """ValueError unless `stores` has every name and their rows are the same tokens."""
    missing = [name for name in names if name not in stores]
    if missing:
        raise ValueError(
            f"predecessor groups need aligned stores at {', '.join(names)}; missing: "
            f"{', '.join(missing)} (harvest all of them in one saelab.harvest call)"
        )
    first = stores[names[0]]
    for name in names:
        store = stores[name]
        if store.info.hookpoint and store.info.hookpoint != name:
            raise ValueError(f"the store filed under {name!r} holds {store.info.hookpoint}")
        same = (
            len(store) == len(first)
            and torch.equal(store.context_N, first.context_N)
            and torch.equal(store.position_N, first.position_N)
        )
        if not same:
            raise ValueError(
                f"the stores of {names[0]} and {name} are not aligned (different tokens per "
                "row): harvest all four hookpoints in one saelab.harvest call"
            )


def linear_part(sae, x_BD: torch.Tensor) -> torch.Tensor:
    """`pre_acts(x) - pre_acts(0)`, `[B, F]`: the part of the pre-activation linear in `x`.

    Exact for every kind whose pre-activation is affine in `x` (relu, topk, batchtopk,
    hierarchical_topk: `(x - b_dec) W_enc + b_enc`; jumprelu: `x W_enc + b_enc`).
    """
    return sae.pre_acts(x_BD) - sae.pre_acts(x_BD.new_zeros(1, x_BD.shape[1]))


def check_affine(sae, x_BD: torch.Tensor, y_BD: torch.Tensor) -> None:
    """ValueError unless `linear_part` is additive on these rows (it is not for a KronSAE,
    whose pre-activation is an mAND of ReLUs, nor for a composite SAE such as a residual)."""
    if not sae.composite:
        lin_x, lin_y = linear_part(sae, x_BD), linear_part(sae, y_BD)
        gap = (linear_part(sae, x_BD + y_BD) - lin_x - lin_y).abs().max()
        scale = torch.maximum(lin_x.abs().max(), lin_y.abs().max())
        if gap <= AFFINE_RTOL * scale + 1e-6:
            return
    raise ValueError(
        f"the exact split needs a pre-activation affine in x; a {sae.kind} SAE's is not "
        "(supported: relu, topk, batchtopk, hierarchical_topk, jumprelu). "
        "Pass exact=False for the groups alone."
    )


@torch.no_grad()
def predecessor_groups(
    saes: dict,
    layer: int,
    stores: dict,
    flow_match: FlowMatch | None = None,
    null: bool = False,
    seed: int = 0,
    batch_size: int = 4096,
    exact: bool = True,
) -> PredecessorGroups:
    """Count, over every token where a feature of `resid_post.{layer}` fires, which of its
    matched sources fire too (the eight `GROUPS`), per feature and in all.

    `stores`: hookpoint name -> ActivationStore, aligned (one multi-hookpoint harvest).
    `flow_match`: `match(saes, layer)` when None. `null=True`: the shuffled-decoder baseline,
    each source's matched index `j` replaced by `perm(j)` for a random permutation of that
    source's features (`seed`), so the groups should fall mostly into "From nowhere".
    `exact=True` adds the three-part split of the target's linear pre-activation (needs an
    affine pre-activation: ValueError for KronSAE and composite SAEs). Codes are computed in
    batches of `batch_size` rows on the target SAE's device.
    """
    hooks, (target, *sources) = layer_saes(saes, layer)
    names = [hooks.target, *hooks.sources]
    check_aligned(stores, names)
    flow_match = match(saes, layer, top_k=1) if flow_match is None else flow_match
    if (flow_match.target, flow_match.sources) != (hooks.target, hooks.sources):
        raise ValueError(f"flow_match is for {flow_match.target}, not {hooks.target}")
    index_FP = flow_match.index_FP
    if null:
        g = torch.Generator().manual_seed(seed)
        perms = [torch.randperm(sae.cfg.width, generator=g) for sae in sources]
        index_FP = torch.stack([perm[index_FP[:, p]] for p, perm in enumerate(perms)], dim=1)
    n_features, n_rows = target.cfg.width, len(stores[hooks.target])
    if n_rows == 0:
        raise ValueError(f"the stores at {', '.join(names)} are empty")
    device, dtype = sae_placement(target)
    if exact:  # on up to 256 rows of two sources, before any long pass
        probe_B = torch.arange(min(256, n_rows))
        check_affine(target, *[stores[n].get(probe_B).to(device, dtype) for n in names[1:3]])
    index_dev_FP = index_FP.to(device)
    group_of_code = GROUP_OF_CODE.to(device)
    counts_FG = torch.zeros(n_features * 8, dtype=torch.int64, device=device)
    largest_GP = torch.zeros(8 * 3, dtype=torch.int64, device=device)
    split_error = torch.zeros((), device=device)
    for start in range(0, n_rows, batch_size):
        rows_B = torch.arange(start, min(start + batch_size, n_rows))
        x_target_BD, *x_source_BD = [stores[n].get(rows_B).to(device, dtype) for n in names]
        row_M, feature_M = fires(target.encode(x_target_BD)).nonzero(as_tuple=True)
        code_M = torch.zeros_like(row_M)
        for p, (sae, x_BD) in enumerate(zip(sources, x_source_BD, strict=True)):
            fired_M = fires(sae.encode(x_BD))[row_M, index_dev_FP[feature_M, p]]
            code_M |= fired_M.long() << p
        group_M = group_of_code[code_M]
        counts_FG += torch.bincount(feature_M * 8 + group_M, minlength=n_features * 8)
        if exact:
            whole_M = linear_part(target, x_target_BD)[row_M, feature_M]
            parts_MP = torch.stack(
                [linear_part(target, x_BD)[row_M, feature_M] for x_BD in x_source_BD], dim=1
            )
            error = (parts_MP.sum(1) - whole_M).abs().max() if len(whole_M) else split_error
            split_error = torch.maximum(split_error, error)
            largest_GP += torch.bincount(group_M * 3 + parts_MP.argmax(1), minlength=8 * 3)
    counts_FG = counts_FG.view(n_features, 8).cpu()
    counts_G = counts_FG.sum(0)
    n_pairs = int(counts_G.sum())
    exact_agreement = max_split_error = largest = None
    if exact:
        largest = largest_GP.view(8, 3).cpu()
        with_source = largest[CODE_OF_GROUP != 0].sum()
        agree = (largest * IN_GROUP_GP).sum()
        exact_agreement = float(agree) / float(with_source) if with_source else float("nan")
        max_split_error = float(split_error)
    return PredecessorGroups(
        layer=int(layer),
        groups=GROUPS,
        null=null,
        n_tokens=n_rows,
        n_pairs=n_pairs,
        counts_G=counts_G,
        shares_G=counts_G.double() / max(n_pairs, 1),
        counts_FG=counts_FG,
        index_FP=index_FP,
        largest_GP=largest,
        exact_agreement=exact_agreement,
        max_split_error=max_split_error,
    )
