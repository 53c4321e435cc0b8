"""The planted SAEs that the saelab.flow matching, graph and group tests share."""

import torch

import saelab

D, W = 256, 24  # 10 planted SAEs x 24 rows = 240 orthonormal directions fit in 256 dims
NOISE = 1e-3  # breaks exact ties; far below every threshold used (0.15, 0.5)


def unit(v):
    return v / v.norm()


def relu_sae(hookpoint, W_dec_FD):
    """A ReLU SAE with encoder = decoder^T and b_enc = -0.5: latent j fires iff <x, d_j> > 0.5."""
    sae = saelab.make_sae("relu", D, W, hookpoint=hookpoint)
    with torch.no_grad():
        sae.W_dec_FD.copy_(W_dec_FD)
        sae.W_enc_DF.copy_(W_dec_FD.T)
        sae.b_enc_F.fill_(-0.5)
    return sae


def planted_saes():
    """SAEs at layers 0..3 whose decoders are orthonormal rows, except the planted chain:
    r1[7] = r0[4] + 0.5 a1[0]; r2[3] = r1[7] + 0.3 m2[6]; r2[5] = m2[2]; r2[9] = r1[1] + a2[4];
    r3[0] = r2[3]; r3[8] = r2[3] + 1.5 m3[5]; r3[11] = r2[3] + 2 a3[1] (all normalised)."""
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0].T
    hooks = [f"resid_post.{L}" for L in range(4)]
    hooks += [f"{site}.{L}" for site in ("mlp_out", "attn_out") for L in (1, 2, 3)]
    rows = {h: basis[k * W : (k + 1) * W].clone() for k, h in enumerate(hooks)}
    r0, r1, r2, r3 = (rows[f"resid_post.{L}"] for L in range(4))
    m2, m3, a1, a2, a3 = (
        rows[h] for h in ("mlp_out.2", "mlp_out.3", "attn_out.1", "attn_out.2", "attn_out.3")
    )
    r1[7] = unit(r0[4] + 0.5 * a1[0])
    r2[3] = unit(r1[7] + 0.3 * m2[6])
    r2[5] = m2[2]
    r2[9] = unit(r1[1] + a2[4])
    r3[0] = r2[3]
    r3[8] = unit(r2[3] + 1.5 * m3[5])
    r3[11] = unit(r2[3] + 2.0 * a3[1])
    for h in hooks:
        rows[h] = rows[h] + NOISE * torch.randn(W, D, generator=g, dtype=torch.float64)
        rows[h] = (rows[h] / rows[h].norm(dim=1, keepdim=True)).float()
    return {h: relu_sae(h, rows[h]) for h in hooks}
