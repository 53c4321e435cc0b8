"""How each deactivation method picks the predecessor of a target feature (docs/methods.md,
"Cross-layer feature flow", step 5, and "SAE Match"): the top-1 decoder cosine of `match`,
a random one of its top 5, all of its top 5, the best Pearson correlation of codes over
harvested tokens, and SAE Match's one-to-one linear assignment."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the harvested block and its cases, built in deactivation.py
    from saelab.flow.deactivation import Case, Layer

METHODS = ("top1_cosine", "random_top5", "top5", "top1_pearson", "permutation", "exhaustive")


def pearson_best(layer: Layer, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(source `[F]`, feature `[F]`): per target feature, the source feature (over all three
    sources) whose codes have the largest Pearson correlation with its codes."""

    def standardise(z_NF):
        z = z_NF.double() - z_NF.double().mean(0)
        return z / z.norm(dim=0).clamp_min(1e-12)

    target = standardise(layer.codes[0])
    best_r = torch.full((target.shape[1],), -2.0, dtype=torch.float64)
    best_p = torch.zeros(target.shape[1], dtype=torch.long)
    best_j = torch.zeros(target.shape[1], dtype=torch.long)
    for p, z_NF in enumerate(layer.codes[1:]):
        source = standardise(z_NF)
        for start in range(0, target.shape[1], chunk):
            r_CF = target[:, start : start + chunk].T @ source
            r, j = r_CF.max(1)
            better = r > best_r[start : start + chunk]
            best_r[start : start + chunk] = torch.where(better, r, best_r[start : start + chunk])
            best_p[start : start + chunk][better] = p
            best_j[start : start + chunk][better] = j[better]
    return best_p, best_j


def assignment(saes: list) -> torch.Tensor:
    """SAE Match's one-to-one permutation: target feature -> residual-source feature
    maximising the summed decoder cosine (linear assignment); -1 where none is assigned."""
    from scipy.optimize import linear_sum_assignment

    rows = [s.W_dec_FD.detach().double().cpu() for s in saes[:2]]
    cos = (rows[0] / rows[0].norm(dim=1, keepdim=True)) @ (
        rows[1] / rows[1].norm(dim=1, keepdim=True)
    ).T
    t_idx, s_idx = linear_sum_assignment(cos.numpy(), maximize=True)
    perm = torch.full((cos.shape[0],), -1, dtype=torch.long)
    perm[torch.as_tensor(t_idx)] = torch.as_tensor(s_idx)
    return perm


def method_picks(method: str, layer: Layer, cases: list[Case], flow_match, seed: int = 0):
    """The predecessors `(source p, [features])` that `method` removes for each case."""
    g = torch.Generator().manual_seed(seed)
    best_p = flow_match.score_FP.argmax(1)
    if method == "top1_cosine":
        return [
            (int(best_p[c.target]), [int(flow_match.index_FP[c.target, best_p[c.target]])])
            for c in cases
        ]
    if method in ("random_top5", "top5"):
        picks = []
        for c in cases:
            p = int(best_p[c.target])
            top = flow_match.top_index_FPK[c.target, p].tolist()
            picks.append(
                (
                    p,
                    top
                    if method == "top5"
                    else [top[int(torch.randint(len(top), (1,), generator=g))]],
                )
            )
        return picks
    if method == "top1_pearson":
        source, feature = pearson_best(layer)
        return [(int(source[c.target]), [int(feature[c.target])]) for c in cases]
    if method == "permutation":
        perm = assignment(layer.saes)
        return [(0, [int(perm[c.target])] if perm[c.target] >= 0 else []) for c in cases]
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
