"""Do two predecessor groups differ in their matching scores? Mann-Whitney U, in torch.

The paper separates predecessor groups by Mann-Whitney U tests on the cosines `s^P`
(docs/methods.md, "Cross-layer feature flow", step 3: share of tests with p < 0.001 of
67%, 72%, 100% for `s^R`, `s^M`, `s^A` between "From MLP" and "MLP & ATT"). `mann_whitney`
is the test (normal approximation with tie and continuity corrections, as scipy's
`mannwhitneyu(method="asymptotic")`), written in torch so saelab needs no scipy.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from saelab.flow.groups import GROUPS, PredecessorGroups
from saelab.flow.match import FlowMatch


class Separation(NamedTuple):
    """Mann-Whitney tests of `s^P` between two predecessor groups (`group_separation`)."""

    groups: tuple[str, str]  # (group a, group b)
    n_pairs: tuple[int, int]  # (token, feature) pairs in each group: the two sample sizes
    U_P: torch.Tensor  # [3] float64 U of group a, per source (res, mlp, att)
    p_P: torch.Tensor  # [3] float64 two-sided p-value per source (nan if a group is empty)


def mann_whitney(a, b) -> tuple[float, float]:
    """(U, p): Mann-Whitney U of sample `a` against `b` and its two-sided p-value.

    `U` counts the pairs (x in a, y in b) with x > y, ties counted 1/2 (computed from the
    average ranks: `U = R_a - n_a(n_a + 1)/2`). `p` is the normal approximation,
    `z = (|U - n_a n_b / 2| - 0.5) / σ`, `σ² = n_a n_b / 12 · (n + 1 - Σ(t³ - t) / (n(n - 1)))`
    over tie blocks of size t, `p = erfc(z / √2)` capped at 1; p = 1 when every value is
    tied. Fine for the thousands of pairs a layer gives; small samples want an exact test.
    """
    a = torch.as_tensor(a, dtype=torch.float64).flatten().cpu()
    b = torch.as_tensor(b, dtype=torch.float64).flatten().cpu()
    n_a, n_b = len(a), len(b)
    if n_a == 0 or n_b == 0:
        raise ValueError(f"Mann-Whitney needs two non-empty samples, got {n_a} and {n_b} values")
    _, inverse, counts = torch.unique(torch.cat([a, b]), return_inverse=True, return_counts=True)
    counts = counts.double()
    mean_rank_U = counts.cumsum(0) - (counts - 1) / 2  # the average rank of each tie block
    U = float(mean_rank_U[inverse[:n_a]].sum()) - n_a * (n_a + 1) / 2
    n = n_a + n_b
    ties = float((counts**3 - counts).sum())
    variance = n_a * n_b / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return U, 1.0
    z = (abs(U - n_a * n_b / 2) - 0.5) / math.sqrt(variance)
    return U, min(1.0, math.erfc(z / math.sqrt(2)))


def group_separation(
    groups: PredecessorGroups,
    flow_match: FlowMatch,
    group_a: str = "From MLP",
    group_b: str = "MLP & ATT",
) -> Separation:
    """Mann-Whitney tests of `s^P(i)` between the pairs of `group_a` and of `group_b`, for
    each source P.

    Every (token, feature i) pair of a group contributes its feature's `s^P(i)` (from
    `flow_match`, the match the groups were counted with), so a feature firing on many
    tokens weighs more. The pairs of one feature are not independent samples: read the
    p-values as a separation score, as the paper does, not as calibrated probabilities.
    """
    for name in (group_a, group_b):
        if name not in GROUPS:
            raise ValueError(f"no group {name!r}; the groups are {', '.join(GROUPS)}")
    if flow_match.layer != groups.layer or len(flow_match.score_FP) != len(groups.counts_FG):
        raise ValueError(
            f"flow_match is for layer {flow_match.layer} ({len(flow_match.score_FP)} features), "
            f"the groups for layer {groups.layer} ({len(groups.counts_FG)} features)"
        )
    count_a_F = groups.counts_FG[:, GROUPS.index(group_a)]
    count_b_F = groups.counts_FG[:, GROUPS.index(group_b)]
    U_P = torch.full((3,), float("nan"), dtype=torch.float64)
    p_P = torch.full((3,), float("nan"), dtype=torch.float64)
    if count_a_F.sum() and count_b_F.sum():
        for p in range(3):
            score_F = flow_match.score_FP[:, p]
            U_P[p], p_P[p] = mann_whitney(
                score_F.repeat_interleave(count_a_F), score_F.repeat_interleave(count_b_F)
            )
    return Separation((group_a, group_b), (int(count_a_F.sum()), int(count_b_F.sum())), U_P, p_P)
