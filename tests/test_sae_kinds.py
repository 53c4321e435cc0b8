"""SAE kinds against float64 hand computations; save/load, input-scale folding, bad inputs."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from synthetic import kron_pre_acts

import saelab
from saelab.sae import SAE_KINDS, load_sae, make_sae
from saelab.sae.base import TrainContext
from saelab.sae.batchtopk import batch_topk_codes

KINDS = [kind for kind, cls in SAE_KINDS.items() if not cls.composite]  # every trainable kind
K_KINDS = ("topk", "batchtopk", "hierarchical_topk", "kron")  # kinds with a k
D, F, K = 16, 64, 4
H, M, N = 4, 2, 8  # KronSAE heads: 4 x 2 x 8 = 64 latents


def perturbed(kind: str, **options):
    """An SAE with random biases, encoder noise and thresholds, so references are not vacuous.

    Every parameter but the decoder is perturbed, whatever the kind calls it: encoder
    weights get noise, biases random values, JumpReLU thresholds a spread of values.
    """
    options = {
        **({"k": K} if kind in K_KINDS else {}),
        **({"heads": H, "m": M, "n": N} if kind == "kron" else {}),
        **options,
    }
    sae = make_sae(kind, D, F, seed=1, **options)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "log_threshold_F":
                p.uniform_(math.log(0.05), math.log(1.0), generator=g)
            elif name.startswith("W_") and name != "W_dec_FD":
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            elif name.startswith("b_"):
                p.copy_(0.4 * torch.randn(p.shape, generator=g))
        if kind == "batchtopk":
            sae.threshold.fill_(0.4)
            sae.threshold_count.fill_(7)
    return sae


def inputs(n: int = 32, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def reference_codes(sae, x_BD: torch.Tensor) -> torch.Tensor:
    """The kind's encoder written out in float64 from the float32 weights."""
    x = x_BD.double()
    if sae.kind == "kron":
        pre = kron_pre_acts(sae, x_BD)
    else:
        W_enc, b_enc, b_dec = (
            t.detach().double() for t in (sae.W_enc_DF, sae.b_enc_F, sae.b_dec_D)
        )
        pre = (x - b_dec) @ W_enc + b_enc
    if sae.kind == "jumprelu":
        z = x @ W_enc + b_enc
        return torch.where(z > sae.log_threshold_F.detach().double().exp(), z, 0.0)
    if sae.kind == "relu":
        return pre.clamp_min(0)
    if sae.kind == "batchtopk":
        return torch.where(pre > sae.threshold.double(), pre, 0.0)
    f = torch.zeros_like(pre)
    for b in range(len(pre)):
        top = pre[b].argsort(descending=True)[: sae.cfg.k]
        f[b, top] = pre[b, top].clamp_min(0)
    return f


@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_float64_reference(kind):
    sae, x = perturbed(kind), inputs()
    x_hat, f = sae(x)
    f_ref = reference_codes(sae, x)
    x_hat_ref = f_ref @ sae.W_dec_FD.detach().double() + sae.b_dec_D.detach().double()
    active = (f_ref > 0).double().mean().item()
    assert 0.02 < active < 0.9, active  # some latents on, some off: the check bites
    torch.testing.assert_close(f.double(), f_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_hat.double(), x_hat_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(f_ref.float()).double(), x_hat_ref, rtol=1e-5, atol=1e-5)


def test_topk_keeps_exactly_k_per_token():
    sae, x = perturbed("topk"), inputs(64)
    with torch.no_grad():
        sae.b_enc_F.add_(1.0)
    pre = sae.pre_acts(x)
    enough = (pre > 0).sum(-1) >= K
    assert enough.all()
    f = sae.encode(x)
    assert ((f > 0).sum(-1) == K).all()
    # and they are the k largest: the smallest kept beats the largest dropped, per token
    kept_min = f.masked_fill(f == 0, float("inf")).min(-1).values
    dropped_max = pre.masked_fill(f > 0, float("-inf")).max(-1).values
    assert (kept_min > dropped_max).all()


def test_batchtopk_training_keeps_k_times_batch():
    sae, x = perturbed("batchtopk"), inputs(64)
    pre = sae.pre_acts(x)
    f = batch_topk_codes(pre, K)
    assert int((f > 0).sum()) == K * 64
    per_token = (f > 0).sum(-1)
    assert per_token.min() < K < per_token.max()  # a batch budget, not a per-token one
    assert f[f > 0].min() > pre.masked_fill(f > 0, float("-inf")).max()
    out = sae.training_loss(x, TrainContext(step=0, n_steps=10))
    assert out.l0.item() == K
    assert int(out.fired_F.sum()) == int((f > 0).any(0).sum())


def test_batchtopk_threshold_is_running_mean_and_inference_is_batch_independent(tmp_path):
    sae = perturbed("batchtopk", threshold_warmup_steps=2, threshold_average_last=1.0)
    with torch.no_grad():
        sae.threshold.zero_()
        sae.threshold_count.zero_()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    smallest = []
    for i in range(6):
        x = inputs(64, seed=10 + i)
        with torch.no_grad():
            f = batch_topk_codes(sae.pre_acts(x), K)
            smallest.append(f[f > 0].min().item())
        out = sae.training_loss(x, TrainContext(step=i, n_steps=6))
        if i == 1:  # the end of warm-up: θ follows the latest batch, nothing averaged yet
            assert sae.threshold.item() == pytest.approx(smallest[1], rel=1e-6)
            assert sae.threshold_count.item() == 0
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert sae.threshold_count.item() == 4
    assert sae.threshold.item() == pytest.approx(sum(smallest[2:]) / 4, rel=1e-6)
    assert out.terms["threshold"] == sae.threshold.item()

    x = inputs(40, seed=99)
    batch = sae.encode(x)
    alone = torch.cat([sae.encode(x[i : i + 1]) for i in range(len(x))])
    assert torch.equal(batch > 0, alone > 0)  # the same latents, whatever the batch
    torch.testing.assert_close(batch, alone, rtol=1e-6, atol=1e-6)  # up to matmul rounding
    assert 0 < (batch > 0).sum(-1).float().mean() < F

    # the threshold and its count are saved, so a resumed mean continues exactly
    sae.save(tmp_path / "b")
    again = load_sae(tmp_path / "b")
    for s in (sae, again):
        s.training_loss(inputs(64, seed=50), TrainContext(step=6, n_steps=8))
    assert torch.equal(sae.threshold, again.threshold) and again.threshold_count.item() == 5


def test_batchtopk_threshold_averages_only_the_last_steps():
    """θ is the mean of the batch minima of the last 20% of steps (steps 8, 9 of 10): a mean
    over earlier steps lags weights that have since moved."""
    sae = perturbed("batchtopk", threshold_warmup_steps=2)
    with torch.no_grad():
        sae.threshold.zero_()
        sae.threshold_count.zero_()
    smallest = []
    for i in range(10):
        x = inputs(64, seed=20 + i)
        with torch.no_grad():
            f = batch_topk_codes(sae.pre_acts(x), K)
            smallest.append(f[f > 0].min().item())
            sae.b_enc_F.add_(0.05)  # the weights move: each batch minimum differs
        sae.update_threshold(f, i, 10)
        if i == 7:  # before the last 20%: θ is the latest minimum, nothing averaged
            assert sae.threshold.item() == pytest.approx(smallest[7], rel=1e-6)
    assert sae.threshold_count.item() == 2
    assert sae.threshold.item() == pytest.approx((smallest[8] + smallest[9]) / 2, rel=1e-6)


def test_losses_match_hand_computation():
    x = inputs(32)
    ctx = TrainContext(step=4, n_steps=100)  # warm-up over 10 steps: λ at half strength

    sae = perturbed("relu", l1_coef=3.0, l1_warmup_frac=0.1)
    with torch.no_grad():
        sae.W_dec_FD.mul_(torch.linspace(0.5, 2.0, F)[:, None])  # non-unit rows: the norms count
    f = reference_codes(sae, x)
    W_dec = sae.W_dec_FD.detach().double()
    mse = (f @ W_dec + sae.b_dec_D.detach().double() - x.double()).pow(2).sum(-1).mean()
    expected = mse + 1.5 * (f * W_dec.norm(dim=1)).sum(-1).mean()
    assert sae.training_loss(x, ctx).loss.item() == pytest.approx(expected.item(), rel=1e-5)

    for target in (None, 5.0):
        sae = perturbed(
            "jumprelu", l0_coef=0.7, target_l0=target, target_l0_coef=40.0, l0_warmup_frac=0.1
        )
        f = reference_codes(sae, x)
        mse = (
            (f @ sae.W_dec_FD.detach().double() + sae.b_dec_D.detach().double() - x.double())
            .pow(2)
            .sum(-1)
            .mean()
        )
        l0 = (f > 0).double().sum(-1).mean()
        penalty = 0.5 * 0.7 * l0 if target is None else 0.5 * 40.0 * (l0 / target - 1) ** 2
        out = sae.training_loss(x, ctx)
        assert out.loss.item() == pytest.approx((mse + penalty).item(), rel=1e-5)
        assert out.l0.item() == pytest.approx(l0.item())
        out.loss.backward()
        assert sae.log_threshold_F.grad.abs().sum() > 0  # the threshold learns


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_bit_exact(kind, tmp_path):
    sae = perturbed(kind)
    sae.cfg.hookpoint, sae.cfg.model = "resid_post.3", "stories260k"
    sae.save(tmp_path / kind)
    loaded = saelab.load_sae(tmp_path / kind)
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    before, after = sae.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for name in before:
        assert after[name].dtype == before[name].dtype and torch.equal(after[name], before[name]), (
            name
        )
    x = inputs()
    assert torch.equal(loaded(x).x_hat, sae(x).x_hat)


@pytest.mark.parametrize("kind", KINDS)
def test_fold_input_scale(kind):
    sae, x, s = perturbed(kind), inputs(), 3.7
    x_hat_scaled, f_scaled = sae(s * x)
    folded = copy.deepcopy(sae)
    folded.fold_input_scale(s)
    x_hat, f = folded(x)
    assert folded.cfg.input_scale == pytest.approx(s)
    assert (f_scaled > 0).any()
    torch.testing.assert_close(f, f_scaled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_hat, x_hat_scaled / s, rtol=1e-5, atol=1e-5)


def test_bad_inputs(tmp_path):
    sae = perturbed("batchtopk")
    folder = sae.save(tmp_path / "sae")
    weights = folder / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_sae(folder)

    folder = sae.save(tmp_path / "sae2")
    (folder / "cfg.json").unlink()
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_sae(folder)

    folder = sae.save(tmp_path / "sae3")
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=D + 1))
    with pytest.raises(ValueError, match=rf"d_in={D}\b.*hidden size is {D + 1}"):
        load_sae(folder, model=model)
    assert (
        load_sae(folder, model=SimpleNamespace(config=SimpleNamespace(hidden_size=D))).cfg.d_in == D
    )

    with pytest.raises(ValueError, match=rf"d_in={D}.*\(8, {D + 2}\)"):
        sae(torch.zeros(8, D + 2))
    with pytest.raises(ValueError, match="unknown SAE kind 'gated'"):
        make_sae("gated", D, F)


def test_sparse_and_dense_topk_decoders_agree_in_value_and_gradient():
    x = torch.randn(64, 16) * 3
    dead = torch.zeros(96, dtype=torch.bool)
    dead[::3] = True
    grads = {}
    for sparse in (True, False):
        sae = saelab.make_sae("topk", 16, 96, k=6, k_aux=5, sparse_decoder=sparse, seed=3)
        out = sae.training_loss(x, TrainContext(0, 10, dead))
        out.loss.backward()
        grads[sparse] = (out.loss.detach(), {n: p.grad.clone() for n, p in sae.named_parameters()})
    torch.testing.assert_close(grads[True][0], grads[False][0], rtol=1e-5, atol=1e-5)
    for name, g in grads[True][1].items():
        torch.testing.assert_close(g, grads[False][1][name], rtol=1e-5, atol=1e-5)
    assert grads[True][0] > 0 and grads[True][1]["W_dec_FD"].abs().sum() > 0


def test_sparse_decoder_is_chosen_where_faster():
    from saelab.sae.topk import use_sparse_decoder

    assert use_sparse_decoder(
        make_sae("topk", 16, 256, k=32).cfg
    )  # F/k = 8: sparse measured faster
    assert not use_sparse_decoder(make_sae("topk", 16, 128, k=32).cfg)  # F/k = 4: dense faster
    assert not use_sparse_decoder(
        make_sae("topk", 16, 4096, k=32, sparse_decoder=False).cfg
    )  # the switch wins
    assert use_sparse_decoder(make_sae("topk", 16, 64, k=4, sparse_decoder=True).cfg)


@pytest.mark.parametrize("kind", KINDS)
def test_new_and_initialised_weights_are_contiguous(kind):
    """Row-major weights: a KronSAE decoder built from its encoder came out column-major
    (stride (1, F)), and the sparse decoder's embedding_bag over it doubled the step time."""
    options = {
        **({"k": K} if kind in K_KINDS else {}),
        **({"heads": H, "m": M, "n": N} if kind == "kron" else {}),
    }
    sae = make_sae(kind, D, F, **options)
    sae.init_from_sample(inputs())
    for name, tensor in sae.state_dict().items():
        assert tensor.is_contiguous(), name
