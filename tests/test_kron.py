"""KronSAE: mAND, the latent map, the forward pass against float64, save/load, folding, training."""

import pytest
import torch
from synthetic import kron_pre_acts, mean_best_cosine, sparse_dictionary_store

from saelab.sae import make_sae
from saelab.sae.base import TrainContext
from saelab.sae.kron import (
    KronSAE,
    hmn_to_latent,
    kron_shape,
    latent_to_hmn,
    mand,
)
from saelab.sae.topk import TopKSAE
from saelab.train import train_sae

D, H, M, N, K = 16, 4, 2, 8, 4
F = H * M * N


def perturbed(**options):
    """A KronSAE with random biases, so the float64 reference is not vacuous."""
    sae = make_sae("kron", D, F, seed=1, **{"heads": H, "m": M, "n": N, "k": K, **options})
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        sae.b_P_HM.copy_(0.3 * torch.randn(H * M, generator=g))
        sae.b_Q_HN.copy_(0.3 * torch.randn(H * N, generator=g))
        sae.b_dec_D.copy_(0.5 * torch.randn(D, generator=g))
    return sae


def inputs(n: int = 32, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mand_is_zero_off_the_positive_quadrant_with_finite_gradients(dtype):
    values = torch.tensor([-2.0, -1e-30, 0.0, 1e-30, 1e-3, 1.0, 5.0], dtype=dtype)
    a = values[:, None].expand(-1, len(values)).clone().requires_grad_()
    b = values[None, :].expand(len(values), -1).clone().requires_grad_()
    out = mand(a, b)
    both_on = (a > 0) & (b > 0)
    assert (out[~both_on] == 0).all()
    exact = (a.detach().double() * b.detach().double()).sqrt()
    torch.testing.assert_close(
        out[both_on].double(), exact[both_on], rtol=1e-6, atol=0
    )  # no underflow either
    out.sum().backward()
    for grad in (a.grad, b.grad):
        assert torch.isfinite(grad).all()
        assert (grad[~both_on] == 0).all()
    # (1e-30)² underflows to 0 in float32: products of exactly 0 with both inputs positive
    # are covered too
    assert (both_on & (a * b == 0)).any() == (dtype == torch.float32)


def test_mand_matches_sqrt_of_product_and_its_derivative():
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(200, generator=g, dtype=torch.float64) * 10 + 1e-6).requires_grad_()
    b = torch.rand(200, generator=g, dtype=torch.float64) * 10 + 1e-6
    out = mand(a, b)
    torch.testing.assert_close(out, (a * b).sqrt(), rtol=1e-12, atol=0)
    out.sum().backward()
    torch.testing.assert_close(a.grad, 0.5 * (b / a.detach()).sqrt(), rtol=1e-10, atol=0)


def test_latent_map_round_trips_and_matches_the_hmn_reshape():
    ids = torch.arange(F)
    g, i, j = latent_to_hmn(ids, M, N)
    assert torch.equal(hmn_to_latent(g, i, j, M, N), ids)
    assert g.max() == H - 1 and i.max() == M - 1 and j.max() == N - 1
    assert len(set(zip(g.tolist(), i.tolist(), j.tolist(), strict=True))) == F  # a bijection
    assert (
        latent_to_hmn(37, M, N) == (2, 0, 5) and hmn_to_latent(2, 0, 5, M, N) == 37
    )  # plain ints too

    sae, x = perturbed(), inputs()
    pre_BF = sae.pre_acts(x)
    u_BHM, v_BHN = sae.head_acts(x)
    pre_BHMN = pre_BF.view(-1, H, M, N)
    for latent in range(F):
        g, i, j = latent_to_hmn(latent, M, N)
        assert torch.equal(pre_BF[:, latent], pre_BHMN[:, g, i, j])
        assert torch.equal(pre_BF[:, latent], mand(u_BHM[:, g, i], v_BHN[:, g, j]))


def reference(sae, x_BD: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mAND values, codes, reconstruction) written out in float64 from the float32 weights,
    head by head."""
    W_dec, b_dec = sae.W_dec_FD.detach().double(), sae.b_dec_D.detach().double()
    pre = kron_pre_acts(sae, x_BD)
    f = torch.zeros_like(pre)
    for b in range(len(pre)):
        top = pre[b].argsort(descending=True)[:k]
        f[b, top] = pre[b, top]
    return pre, f, f @ W_dec + b_dec


@pytest.mark.parametrize("k, b_P_shift", [(K, 0.0), (2, 0.0), (K, -1.5)])
def test_forward_matches_float64_reference(k, b_P_shift):
    sae, x = perturbed(), inputs()
    with torch.no_grad():
        sae.b_P_HM.add_(b_P_shift)  # most u off: some tokens then have fewer than k latents on
    x_hat, f = sae(x, k=k)
    pre_ref, f_ref, x_hat_ref = reference(sae, x, k)
    positive = (pre_ref > 0).sum(-1)
    assert (positive > k).any()  # the top-k selection drops positive latents: it bites
    assert (positive < k).any() == (b_P_shift < 0)
    torch.testing.assert_close(f.double(), f_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_hat.double(), x_hat_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.encode(x, k).double(), f_ref, rtol=1e-5, atol=1e-5)


def test_kron_shape_and_config_errors():
    for width in (4608, 18432, 65536):
        h, m, n = kron_shape(width)
        assert h * m * n == width and 2 <= m <= n <= 4 * m
    assert kron_shape(4608) == (72, 8, 8) and kron_shape(4608, heads=288) == (288, 4, 4)
    # 16 × 16 heads from width 16,384 on (the better frontier at 18432)
    assert kron_shape(16383 + 1) == (64, 16, 16) and kron_shape(18432) == (72, 16, 16)
    assert kron_shape(65536) == (256, 16, 16) and kron_shape(15360) == (240, 8, 8)
    with pytest.raises(ValueError, match="65537"):
        kron_shape(65537)  # prime
    with pytest.raises(ValueError, match="7 heads"):
        kron_shape(4608, heads=7)
    with pytest.raises(ValueError, match=r"width == heads·m·n.*heads=4, m=2, n=8 \(64\)"):
        make_sae("kron", D, 60, heads=4, m=2, n=8)
    with pytest.raises(ValueError, match="both m and n"):
        make_sae("kron", D, F, m=2)
    assert make_sae("kron", D, F, m=2, n=8).cfg.heads == H
    sae = make_sae("kron", 576, 4608)
    assert (sae.cfg.heads, sae.cfg.m, sae.cfg.n) == (72, 8, 8)
    assert (
        sae.encoder_multiply_adds() * 4
        == make_sae("topk", 576, 4608).encoder_multiply_adds()
        == 4608 * 576
    )


def test_no_dense_encoder():
    """Save/load and input-scale folding are tested with every kind in test_sae_kinds.py."""
    sae = perturbed()
    names = dict(sae.named_parameters())
    assert "W_enc_DF" not in names and "b_enc_F" not in names
    assert sum(p.numel() for p in sae.parameters()) == F * D + D + H * (M + N) * (D + 1)


def test_training_reconstructs_a_sparse_dictionary():
    # Measured (seeds 0-2, 300k tokens, the random decoder init): FVU 0.32-0.33, mean best
    # cosine 0.85-0.86. The decoder from the encoder (the default) starts at FVU ~0.7.
    store, D_FD = sparse_dictionary_store()
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # [256, 32] products gain nothing from 2 threads and crawl when a core is busy
    try:
        sae = train_sae(
            store,
            "kron",
            width=128,
            max_tokens=300_000,
            batch_size=256,
            lr=3e-3,
            progress=False,
            k=4,
            heads=8,
            m=4,
            n=4,
        )
    finally:
        torch.set_num_threads(threads)
    x = store.acts_ND[:2000]
    fvu = (sae(x).x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert fvu < 0.45
    assert sae.history[0]["fvu"] > 1.5 * fvu  # training, not the init, reconstructs
    assert (
        mean_best_cosine(sae.W_dec_FD.detach(), D_FD) > 0.7
    )  # 128 random directions in 32 dims: ~0.5


def test_sparse_and_dense_decoders_agree_in_value_and_gradient():
    x = inputs(64) * 3
    dead = torch.zeros(F, dtype=torch.bool)
    dead[::3] = True
    grads = {}
    for sparse in (True, False):
        sae = perturbed(k_aux=5, sparse_decoder=sparse)
        out = sae.training_loss(x, TrainContext(0, 10, dead))
        out.loss.backward()
        grads[sparse] = (out.loss.detach(), {n: p.grad.clone() for n, p in sae.named_parameters()})
        assert out.terms["auxk"] > 0
    torch.testing.assert_close(grads[True][0], grads[False][0], rtol=1e-5, atol=1e-5)
    for name, g in grads[True][1].items():
        torch.testing.assert_close(g, grads[False][1][name], rtol=1e-5, atol=1e-5)
    assert grads[True][1]["W_P_DHM"].abs().sum() > 0 and grads[True][1]["W_Q_DHN"].abs().sum() > 0


@pytest.mark.parametrize("with_dead", [False, True])
def test_training_loss_matches_topk_path_through_all_mand_values(with_dead):
    """`top_latents` (backward over the k chosen latents) against TopK's loss on `pre_acts`
    (over all F)."""
    x = inputs(64) * 2
    dead = torch.arange(F) % 3 == 0 if with_dead else None
    results = {}
    for loss_fn in (KronSAE.training_loss, TopKSAE.training_loss):
        sae = perturbed(k_aux=5)
        out = loss_fn(sae, x, TrainContext(0, 10, dead))
        out.loss.backward()
        results[loss_fn] = out, {n: p.grad.clone() for n, p in sae.named_parameters()}
    (kron, kron_grads), (ref, ref_grads) = results.values()
    torch.testing.assert_close(kron.loss, ref.loss, rtol=1e-6, atol=1e-6)
    assert (
        torch.equal(kron.fired_F, ref.fired_F)
        and kron.l0 == ref.l0
        and kron.terms == pytest.approx(ref.terms)
    )
    assert (kron.terms["auxk"] > 0) == with_dead
    for name, g in ref_grads.items():
        torch.testing.assert_close(kron_grads[name], g, rtol=1e-5, atol=1e-6)
    assert ref_grads["W_P_DHM"].abs().sum() > 0 and ref_grads["b_Q_HN"].abs().sum() > 0


def test_encoder_decoder_init_points_each_row_along_its_two_factors():
    sae = make_sae("kron", D, F, seed=1, heads=H, m=M, n=N, k=K)  # the default
    P, Q, W = sae.W_P_DHM.detach(), sae.W_Q_DHN.detach(), sae.W_dec_FD.detach()
    for latent in range(F):
        g, i, j = (int(t) for t in latent_to_hmn(latent, M, N))
        direction = P[:, g * M + i] + Q[:, g * N + j]
        torch.testing.assert_close(W[latent], direction / direction.norm(), rtol=0, atol=1e-6)
    random_init = make_sae("kron", D, F, seed=1, heads=H, m=M, n=N, k=K, decoder_init="random")
    random_init = random_init.W_dec_FD.detach()
    assert not torch.allclose(random_init, W, atol=0.1)
    with pytest.raises(ValueError, match="decoder_init"):
        make_sae("kron", D, F, heads=H, m=M, n=N, k=K, decoder_init="tied")
