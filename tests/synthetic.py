"""Activations drawn from a known sparse dictionary, for recovery and resume tests."""

import torch

from saelab.activations import ActivationStore


def sparse_dictionary_store(d=32, n_features=128, n=40_000, k=4, offset=0.3, seed=0):
    """(store, true dictionary `[F, D]`): x = sparse codes @ D + offset, k features per token."""
    g = torch.Generator().manual_seed(seed)
    D_FD = torch.randn(n_features, d, generator=g)
    D_FD /= D_FD.norm(dim=1, keepdim=True)
    idx_NK = torch.rand(n, n_features, generator=g).argsort(1)[:, :k]
    vals_NK = torch.rand(n, k, generator=g) * 2 + 0.5
    x_ND = torch.zeros(n, n_features).scatter_(1, idx_NK, vals_NK) @ D_FD + offset
    return ActivationStore.from_tensor(x_ND, hookpoint="resid_post.0", model="synthetic"), D_FD


def mean_best_cosine(W_dec_FD: torch.Tensor, D_FD: torch.Tensor) -> float:
    """For each true feature, the best cosine with a learned decoder row, averaged."""
    W = W_dec_FD / W_dec_FD.norm(dim=1, keepdim=True)
    return (W @ D_FD.T).max(0).values.mean().item()


def kron_pre_acts(sae, x_BD: torch.Tensor) -> torch.Tensor:
    """A KronSAE's mAND values in float64, latent by latent: sqrt(u_i v_j) of head g's u, v."""
    h, m, n = sae.cfg.heads, sae.cfg.m, sae.cfg.n
    P, Q, b_P, b_Q, b_dec = (
        t.detach().double() for t in (sae.W_P_DHM, sae.W_Q_DHN, sae.b_P_HM, sae.b_Q_HN, sae.b_dec_D)
    )
    x = x_BD.double() - b_dec
    pre = torch.zeros(len(x), h * m * n, dtype=torch.float64)
    for g in range(h):
        u = (x @ P[:, g * m : (g + 1) * m] + b_P[g * m : (g + 1) * m]).clamp_min(0)
        v = (x @ Q[:, g * n : (g + 1) * n] + b_Q[g * n : (g + 1) * n]).clamp_min(0)
        for i in range(m):
            for j in range(n):
                pre[:, g * m * n + i * n + j] = (u[:, i] * v[:, j]).sqrt()
    return pre
