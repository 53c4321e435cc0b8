"""What a latent's decoder direction does to the next-token logits, read off the weights.

Shapes in names: V vocabulary, D the model's hidden size, K tokens listed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from saelab.data import token_str
from saelab.features.stats import Histogram
from saelab.models import final_norm_weight, hf_module


class LogitEffects(NamedTuple):
    """Tokens a latent's decoder direction promotes and suppresses (`logit_effects`)."""

    latent: int
    promoted: list[str]  # top_k tokens with the largest logit effect, descending
    promoted_values_K: torch.Tensor
    suppressed: list[str]  # top_k tokens with the most negative effect, most negative first
    suppressed_values_K: torch.Tensor


@torch.no_grad()
def logit_vector(sae, model, latent: int) -> torch.Tensor:
    """Direct effect of `latent`'s decoder row on the logits: `W_U (g * d)`, float32 `[V]`.

    `W_U` is the output embedding `[V, D]`, `d` the decoder row and `g` the final norm's
    gain, applied as a diagonal scale. The norm's division by the token's RMS (and, for
    LayerNorm, its mean subtraction and bias) is left out: the RMS is a positive
    per-token scalar, so it changes the size of the effects but not their order.
    """
    W_U_VD = hf_module(model).get_output_embeddings().weight.detach().float().cpu()
    d_D = sae.W_dec_FD[latent].detach().float().cpu()
    gain_D = final_norm_weight(model)
    if gain_D is not None:
        d_D = d_D * gain_D.detach().float().cpu()
    return W_U_VD @ d_D


def logit_histogram(logits_V: torch.Tensor, n_bins: int = 40) -> Histogram:
    """Histogram of a latent's logit effects over the whole vocabulary (`logit_vector`):
    sae_vis's logit histogram, whose tails are the promoted and suppressed tokens."""
    lo, hi = float(logits_V.min()), float(logits_V.max())
    if hi <= lo:
        hi = lo + 1e-6
    counts, edges = torch.histogram(logits_V.float(), bins=n_bins, range=(lo, hi))
    return Histogram(counts.long(), edges)


@torch.no_grad()
def logit_effects(sae, model, latent: int, top_k: int = 10, logits_V=None) -> LogitEffects:
    """The `top_k` tokens `latent`'s decoder row promotes and suppresses most (`logit_vector`;
    pass `logits_V` when it is already computed)."""
    logits_V = logit_vector(sae, model, latent) if logits_V is None else logits_V
    top = logits_V.topk(top_k)
    bottom = (-logits_V).topk(top_k)
    tokenizer = getattr(model, "tokenizer", None)  # a bare HF module has none: show ids

    def names(ids: torch.Tensor) -> list[str]:
        if tokenizer is None:
            return [str(i) for i in ids.tolist()]
        return [token_str(tokenizer, i) for i in ids.tolist()]

    return LogitEffects(
        latent, names(top.indices), top.values, names(bottom.indices), -bottom.values
    )
