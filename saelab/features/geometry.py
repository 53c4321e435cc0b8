"""Decoder geometry: how close the feature directions of two SAEs (or of one) are.

`decoder_similarity` is the kernel: for every decoder row of one SAE, the nearest decoder
rows of another by cosine. Cross-layer feature flow matches features this way
(docs/methods.md, "Cross-layer feature flow"), and `decoder_redundancy` asks it whether a
residual SAE re-learns its base's directions. Shapes in names: F_a, F_b decoder rows,
D their width, K the `top_k` neighbours kept, N rows of one chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch

from saelab.sae import ResidualSAE

CHUNK_FLOATS = 2**26  # cosines held at once: 2^26 float32 = 256 MB (65k x 65k would be 16 GiB)


class DecoderSimilarity(NamedTuple):
    """Each row of `a`'s nearest rows of `b` (`decoder_similarity`)."""

    values_FK: torch.Tensor  # [F_a, top_k] float32 cosines (|cos| with absolute=True), descending
    indices_FK: torch.Tensor  # [F_a, top_k] int64 rows of `b`


class Neighbour(NamedTuple):
    """A decoder row near another one (`nearest_features`)."""

    source: str  # the name of the SAE the row belongs to
    latent: int  # its row (latent) in that SAE
    cosine: float  # signed cosine with the query row


class Redundancy(NamedTuple):
    """How far one block's decoder rows repeat another's (`decoder_redundancy`)."""

    block_F: torch.Tensor  # [F_block] each row's largest |cosine| with any reference row
    reference_F: torch.Tensor  # [F_ref] each reference row's largest |cosine| with another one


def _unit_rows(sae_or_W) -> torch.Tensor:
    """Decoder rows scaled to unit norm, float32. Saved SAEs have row norms 1/input_scale
    (the scale is folded into the weights), so cosines need the division."""
    W_FD = sae_or_W if isinstance(sae_or_W, torch.Tensor) else sae_or_W.W_dec_FD
    W_FD = W_FD.detach().float()
    return W_FD / W_FD.norm(dim=1, keepdim=True).clamp_min(1e-8)


@torch.no_grad()
def decoder_similarity(
    a,
    b,
    top_k: int = 1,
    chunk: int | None = None,
    exclude_self: bool = False,
    absolute: bool = False,
) -> DecoderSimilarity:
    """For every decoder row of `a`, the `top_k` largest cosines with the decoder rows of `b`.

    `a` and `b` are SAEs or `[F, D]` tensors of decoder rows. The cosine is signed (a row
    pointing the opposite way is far); `absolute=True` ranks by |cosine|. `exclude_self`
    (for `b` the same rows as `a`) leaves out row i of `b` for row i of `a`. The rows of `a`
    go through in chunks of `chunk` (default `2**26 // F_b`, so at most 256 MB of cosines
    at once): two 65k-latent SAEs never hold the `[F_a, F_b]` matrix. Runs on `a`'s device.
    """
    a_FD = _unit_rows(a)
    b_FD = _unit_rows(b).to(a_FD.device)
    if a_FD.shape[1] != b_FD.shape[1]:
        raise ValueError(
            f"decoder rows of width {a_FD.shape[1]} and {b_FD.shape[1]} cannot be "
            "compared: the SAEs read different spaces"
        )
    if exclude_self and a_FD.shape != b_FD.shape:
        raise ValueError(
            f"exclude_self pairs row i of a with row i of b; got {len(a_FD)} and {len(b_FD)} rows"
        )
    candidates = len(b_FD) - int(exclude_self)
    if not 1 <= top_k <= candidates:
        raise ValueError(f"top_k={top_k}: need 1 <= top_k <= {candidates} (rows of b to rank)")
    chunk = max(1, CHUNK_FLOATS // len(b_FD)) if chunk is None else chunk
    values, indices = [], []
    for start in range(0, len(a_FD), chunk):
        cos_NF = a_FD[start : start + chunk] @ b_FD.T
        if absolute:
            cos_NF.abs_()
        if exclude_self:
            idx = torch.arange(start, start + len(cos_NF), device=cos_NF.device)
            cos_NF[idx - start, idx] = float("-inf")
        top = cos_NF.topk(top_k, dim=1)
        values.append(top.values)
        indices.append(top.indices)
    return DecoderSimilarity(torch.cat(values), torch.cat(indices))


@torch.no_grad()
def decoder_redundancy(
    sae: ResidualSAE, block: str | None = None, reference: str = "base", chunk: int | None = None
) -> Redundancy:
    """Largest |cosine| between each decoder row of `block` and the rows of `reference`.

    For a residual SAE: does the residual learn new directions or re-learn the base's?
    `block` defaults to the last residual. `reference_F` (each base row against the other
    base rows) is the yardstick: how close two distinct latents of one SAE usually are.
    """
    if not isinstance(sae, ResidualSAE):
        raise ValueError(
            "decoder_redundancy compares the blocks of a residual SAE (saelab.ResidualSAE)"
        )
    blocks = {b.name: b for b in sae.blocks}
    block = block or sae.blocks[-1].name
    for name in (block, reference):
        if name not in blocks:
            raise ValueError(f"no block {name!r}; the SAE has {list(blocks)}")
    W_FD = sae.W_dec_FD.detach()
    ref_RD = W_FD[blocks[reference].start : blocks[reference].stop]
    rows_BD = W_FD[blocks[block].start : blocks[block].stop]
    near = decoder_similarity(
        rows_BD, ref_RD, chunk=chunk, exclude_self=block == reference, absolute=True
    )
    ref_near = decoder_similarity(ref_RD, ref_RD, chunk=chunk, exclude_self=True, absolute=True)
    return Redundancy(near.values_FK[:, 0], ref_near.values_FK[:, 0])


@torch.no_grad()
def nearest_features(
    sae, latent: int, saes: Mapping[str, object] | None = None, top_k: int = 5
) -> list[Neighbour]:
    """The `top_k` decoder rows nearest (signed cosine) to `latent`'s, in each SAE of `saes`
    (name -> SAE, e.g. the layer SAEs of a feature flow; default `{"this SAE": sae}`),
    most similar first within each SAE. The query row itself is left out where an SAE
    of `saes` is `sae`."""
    saes = {"this SAE": sae} if saes is None else saes
    row_1D = sae.W_dec_FD[latent : latent + 1]
    out = []
    for name, other in saes.items():
        own = other is sae
        take = min(top_k + int(own), int(other.W_dec_FD.shape[0]))
        near = decoder_similarity(row_1D, other, top_k=take)
        pairs = zip(near.indices_FK[0].tolist(), near.values_FK[0].tolist(), strict=True)
        kept = [Neighbour(name, i, v) for i, v in pairs if not (own and i == latent)]
        out.extend(kept[:top_k])
    return out
