"""Data-free matching of one layer's features to their three possible predecessors.

Step 1 of cross-layer feature flow (docs/methods.md, "Cross-layer feature flow"): every
feature `i` of the target `resid_post.L` is matched, by the signed cosine of unit decoder
rows, to the features of the three sources that can write it: the block input
`resid_post.{L-1}` ("res"), the MLP output `mlp_out.L` ("mlp") and the attention output
`attn_out.L` ("att"). `j_P(i)` is the best source feature and `s^P(i)` its cosine (top-1,
many-to-one); the top-k neighbours are kept as the variant. Shapes in names: F target
features, P the three sources (res, mlp, att), K neighbours.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from saelab.features import decoder_similarity
from saelab.sae import check_fits

SOURCE_NAMES = ("res", "mlp", "att")  # the P axis of every [F, P] tensor, in this order


class FlowHookpoints(NamedTuple):
    """The four SAE positions of block `layer` (`flow_hookpoints`)."""

    target: str  # resid_post.{layer}
    sources: tuple[str, str, str]  # resid_post.{layer-1}, mlp_out.{layer}, attn_out.{layer}


class FlowMatch(NamedTuple):
    """Each target feature's best predecessor at each source (`match`)."""

    layer: int
    target: str  # the target hookpoint, resid_post.{layer}
    sources: tuple[str, str, str]  # hookpoints of res, mlp, att (the P axis)
    index_FP: torch.Tensor  # [F, 3] int64: j_P(i), the source feature with the largest cosine
    score_FP: torch.Tensor  # [F, 3] float32: s^P(i), that cosine (signed)
    top_index_FPK: torch.Tensor  # [F, 3, K] int64: the K best source features, best first
    top_score_FPK: torch.Tensor  # [F, 3, K] float32: their cosines, descending


def flow_hookpoints(layer: int) -> FlowHookpoints:
    """Target `resid_post.{layer}` and its sources (`resid_post.{layer-1}`, `mlp_out.{layer}`,
    `attn_out.{layer}`). Layer 0 has no previous `resid_post` (its block input is the
    embedding), so it has no flow match: ValueError."""
    layer = int(layer)
    if layer < 1:
        raise ValueError(
            f"layer {layer} has no resid_post.{layer - 1} to match against (the block input "
            "of layer 0 is the embedding): feature flow starts at layer 1"
        )
    sources = (f"resid_post.{layer - 1}", f"mlp_out.{layer}", f"attn_out.{layer}")
    return FlowHookpoints(f"resid_post.{layer}", sources)


def layer_saes(saes: dict, layer: int) -> tuple[FlowHookpoints, list]:
    """(hookpoints, [target SAE, res SAE, mlp SAE, att SAE]) of block `layer`.

    ValueError naming every missing hookpoint (and those the dict has); each SAE must
    have been trained on the hookpoint it is filed under (`check_fits`) when it records one.
    """
    hooks = flow_hookpoints(layer)
    names = [hooks.target, *hooks.sources]
    missing = [name for name in names if name not in saes]
    if missing:
        raise ValueError(
            f"feature flow at layer {layer} needs SAEs at {', '.join(names)}; missing: "
            f"{', '.join(missing)} (the dict has: {', '.join(map(str, saes)) or 'nothing'})"
        )
    for name in names:
        check_fits(saes[name].cfg, f"the SAE filed under {name!r}", hookpoint=name)
    return hooks, [saes[name] for name in names]


def match(saes: dict, layer: int, top_k: int = 5, chunk: int | None = None) -> FlowMatch:
    """Match every feature of `resid_post.{layer}` to its nearest decoder rows at
    `resid_post.{layer-1}`, `mlp_out.{layer}` and `attn_out.{layer}`.

    `saes` maps hookpoint names to SAEs. Cosines come from
    `saelab.features.decoder_similarity` (rows normalised first; chunks of `chunk` target
    rows, by default at most 256 MB of cosines at once, so 16k x 16k never holds the
    `[F, F]` matrix). Runs on the target SAE's device; the results are on the CPU.
    """
    hooks, (target, *sources) = layer_saes(saes, layer)
    near = [decoder_similarity(target, source, top_k=top_k, chunk=chunk) for source in sources]
    top_score_FPK = torch.stack([n.values_FK for n in near], dim=1).cpu()
    top_index_FPK = torch.stack([n.indices_FK for n in near], dim=1).cpu()
    return FlowMatch(
        layer=int(layer),
        target=hooks.target,
        sources=hooks.sources,
        index_FP=top_index_FPK[:, :, 0].contiguous(),
        score_FP=top_score_FPK[:, :, 0].contiguous(),
        top_index_FPK=top_index_FPK,
        top_score_FPK=top_score_FPK,
    )
