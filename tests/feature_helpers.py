"""The SAE, codes and statistics that the saelab.features tests share (stories260K `store`)."""

import torch

import saelab
from saelab.features import feature_stats


def topk_sae():
    """A random TopK SAE over stories260K's width 64: 128 latents, k = 8."""
    return saelab.make_sae("topk", 64, 128, k=8, seed=1)


def dense_codes(sae, store):
    """Every store row's codes `[N, F]` in one batch: the brute-force reference."""
    with torch.no_grad():
        return sae.encode(store.get(torch.arange(len(store))))


def merged_stats(sae, store):
    """`feature_stats` with the top 10 rows per latent over batches of 300: many batches,
    so the statistics exercise the merge."""
    return feature_stats(sae, store, top_k=10, batch_size=300)


def identity_relu_sae(width: int):
    """A ReLU SAE over stories260K's width 64 whose latent i is input dimension i (no biases):
    its codes are the activations' first `width` dimensions, so tests set codes by hand."""
    sae = saelab.make_sae("relu", 64, width, seed=0)
    with torch.no_grad():
        sae.W_enc_DF.zero_()
        sae.W_enc_DF[torch.arange(width), torch.arange(width)] = 1.0
        sae.b_enc_F.zero_()
        sae.b_dec_D.zero_()
    return sae
