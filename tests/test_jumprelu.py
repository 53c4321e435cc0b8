"""JumpReLU's pseudo-derivatives and training options against float64 by hand."""

import pytest
import torch
from test_sae_kinds import F, inputs, perturbed

from saelab.sae.base import TrainContext
from saelab.sae.jumprelu import jumprelu, step


def test_jumprelu_pseudo_gradients_by_hand():
    # ε = 0.1: the window is |z - θ| < 0.05. θ per latent; G weights each output.
    theta = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    z0 = torch.tensor(
        [
            [1.03, 2.2, 0.46],  # inside above, outside, inside below
            [0.96, 1.94, 0.52],  # inside below, outside (|u| = 0.6), inside above
            [0.5, 2.04, 0.9],
        ],  # outside below, inside above, outside above
        dtype=torch.float64,
    )
    G = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=torch.float64)

    z = z0.clone().requires_grad_()
    out = jumprelu(z, theta, 0.1)
    assert out.tolist() == [[1.03, 2.2, 0.0], [0.0, 0.0, 0.52], [0.0, 2.04, 0.9]]
    (out * G).sum().backward()
    # d/dz = G H(z - θ); d/dθ_j = -(θ_j/ε) Σ_b G_bj K_bj with K = [[1,0,1],[1,0,1],[0,1,0]]
    assert z.grad.tolist() == [[1.0, 2.0, 0.0], [0.0, 0.0, 6.0], [0.0, 8.0, 9.0]]
    torch.testing.assert_close(
        theta.grad, torch.tensor([-10.0 * 5, -20.0 * 8, -5.0 * 9], dtype=torch.float64)
    )

    theta.grad = None
    z = z0.clone().requires_grad_()
    out = step(z, theta, 0.1)
    assert out.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0]]
    (out * G).sum().backward()
    assert z.grad.tolist() == [[0.0] * 3] * 3
    torch.testing.assert_close(
        theta.grad, torch.tensor([-10.0 * 5, -10.0 * 8, -10.0 * 9], dtype=torch.float64)
    )

    # ste_to_input: z also gets the jump's pseudo-derivative, +(θ/ε) K G for the JumpReLU
    # and +(1/ε) K G for the step; θ's gradients are unchanged.
    K_window = torch.tensor([[1.0, 0, 1], [1, 0, 1], [0, 1, 0]], dtype=torch.float64)
    for fn, scale, mask in (
        (jumprelu, theta.detach() / 0.1, (z0 > theta.detach()).double()),
        (step, torch.full((3,), 10.0, dtype=torch.float64), torch.zeros(3, 3).double()),
    ):
        z = z0.clone().requires_grad_()
        (fn(z, theta.detach(), 0.1, True) * G).sum().backward()
        torch.testing.assert_close(z.grad, G * mask + scale * K_window * G)


def test_jumprelu_options_match_hand_computation():
    """The pre-activation loss, the tanh penalty (alone and in the target-L0 form) and the
    centred pre-activation, each against float64 by hand."""
    x, ctx_dead = inputs(32), TrainContext(step=4, n_steps=100, dead_F=torch.arange(F) % 3 == 0)
    norms = torch.linspace(0.5, 2.0, F, dtype=torch.float64)

    def hand(sae, center=False):
        W_enc, b_enc, b_dec, W_dec = (
            t.detach().double() for t in (sae.W_enc_DF, sae.b_enc_F, sae.b_dec_D, sae.W_dec_FD)
        )
        z = (x.double() - (b_dec if center else 0)) @ W_enc + b_enc
        theta = sae.log_threshold_F.detach().double().exp()
        f = torch.where(z > theta, z, 0.0)
        mse = (f @ W_dec + b_dec - x.double()).pow(2).sum(-1).mean()
        return z, theta, f, mse

    sae = perturbed("jumprelu", l0_coef=0.7, l0_warmup_frac=0.1, pre_act_loss_coef=0.3)
    with torch.no_grad():
        sae.W_dec_FD.mul_(norms[:, None].float())
    z, theta, f, mse = hand(sae)
    gap = ((theta - z).clamp_min(0) * ctx_dead.dead_F.double() * norms).sum(-1).mean()
    expected = mse + 0.5 * 0.7 * (f > 0).double().sum(-1).mean() + 0.3 * gap
    out = sae.training_loss(x, ctx_dead)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.terms["pre_act_loss"] == pytest.approx(0.3 * gap.item(), rel=1e-5)

    sae = perturbed("jumprelu", l0_coef=0.7, l0_warmup_frac=0.1, sparsity_loss="tanh")
    with torch.no_grad():
        sae.W_dec_FD.mul_(norms[:, None].float())
    z, theta, f, mse = hand(sae)
    tanh_sum = torch.tanh(4.0 * f * norms).sum(-1).mean()
    out = sae.training_loss(x, TrainContext(step=4, n_steps=100))
    assert out.loss.item() == pytest.approx((mse + 0.5 * 0.7 * tanh_sum).item(), rel=1e-5)

    # target form with tanh: the value is λ (L0/T - 1)^2 of the counted L0, the gradient that
    # of slope · Σ tanh, slope = 2 λ (L0/T - 1) / T
    sae = perturbed("jumprelu", target_l0=5.0, target_l0_coef=40.0, l0_warmup_frac=0.1,
                    sparsity_loss="tanh")  # fmt: skip
    z, theta, f, mse = hand(sae)
    l0 = (f > 0).double().sum(-1).mean().item()
    out = sae.training_loss(x, TrainContext(step=4, n_steps=100))
    assert out.loss.item() == pytest.approx((mse + 20.0 * (l0 / 5 - 1) ** 2).item(), rel=1e-5)
    out.loss.backward()
    got = sae.log_threshold_F.grad.clone()
    sae.zero_grad()
    z_BF = sae.pre_acts(x)
    f_BF = jumprelu(z_BF, sae.threshold_F, sae.cfg.bandwidth)
    surrogate = torch.tanh(4.0 * f_BF).sum(-1).mean()  # unit decoder rows
    mse_t = (sae.decode(f_BF) - x).pow(2).sum(-1).mean()
    (mse_t + 2 * 20.0 * (l0 / 5 - 1) / 5 * surrogate).backward()
    torch.testing.assert_close(got, sae.log_threshold_F.grad)
    assert got.abs().sum() > 0

    sae = perturbed("jumprelu", center_input=True)
    z, theta, f, mse = hand(sae, center=True)
    torch.testing.assert_close(sae.encode(x).double(), f, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(f, hand(sae)[2])  # b_dec is random: centring changes the codes


def test_centred_training_folds_into_gemma_scope_form():
    """`fold_input_scale` (the trainer's last step) writes a centred encoder as
    `x W_enc + (b_enc - b_dec W_enc)`: the same codes on raw inputs, center_input off."""
    sae = perturbed("jumprelu", center_input=True)
    x = inputs(40)
    s = 2.5
    trained = sae.encode(s * x)  # what training saw, on s·x
    sae.fold_input_scale(s)
    assert sae.cfg.center_input is False
    torch.testing.assert_close(sae.encode(x), trained, rtol=1e-5, atol=1e-5)
    assert (trained > 0).any() and not torch.equal(sae.b_enc_F, perturbed("jumprelu").b_enc_F)


def test_topk_cap_reconstructs_from_the_largest_codes_only():
    """With topk_cap, training reconstructs from the round(cap × target_l0) largest codes of
    each token; the L0 the penalty counts is still every latent above θ."""
    x = inputs(32)
    sae = perturbed("jumprelu", target_l0=2.0, topk_cap=1.5)  # at most 3 codes per token
    with torch.no_grad():
        sae.log_threshold_F.fill_(-8.0)  # θ ~ 3e-4: most positive z fire
    W_enc, b_enc, W_dec, b_dec = (
        t.detach().double() for t in (sae.W_enc_DF, sae.b_enc_F, sae.W_dec_FD, sae.b_dec_D)
    )
    f = (x.double() @ W_enc + b_enc).clamp_min(0)
    f = torch.where(f > 3.35e-4, f, 0.0)
    assert (f > 0).sum(-1).min() > 3  # the cap binds on every token
    kept = torch.zeros_like(f).scatter_(1, f.topk(3, dim=1).indices, 1.0)
    mse = ((f * kept) @ W_dec + b_dec - x.double()).pow(2).sum(-1).mean()
    out = sae.training_loss(x, TrainContext(step=50, n_steps=100))
    assert out.mse.item() == pytest.approx(mse.item(), rel=1e-5)
    assert out.l0.item() == pytest.approx((f > 0).double().sum(-1).mean().item())
