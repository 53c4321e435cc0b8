"""Residual SAEs: a frozen base plus residual SAEs with no decoder bias, summed."""

import pytest
import torch

import saelab
from saelab.activations import ActivationStore
from saelab.sae import ResidualSAE, load_sae, make_sae
from saelab.train import ErrorStore


def _store(x_ND: torch.Tensor) -> ActivationStore:
    return ActivationStore.from_tensor(x_ND, hookpoint="resid_post.0", model="synthetic")


def _two_domains(d=32, n=20_000, seed=0):
    """(general store, domain store): sparse codes over two disjoint halves of one dictionary."""
    g = torch.Generator().manual_seed(seed)
    D_FD = torch.randn(128, d, generator=g)
    D_FD /= D_FD.norm(dim=1, keepdim=True)

    def draw(features):
        idx_NK = features[torch.rand(n, len(features), generator=g).argsort(1)[:, :4]]
        vals_NK = torch.rand(n, 4, generator=g) * 2 + 0.5
        return _store(torch.zeros(n, 128).scatter_(1, idx_NK, vals_NK) @ D_FD + 0.3)

    return draw(torch.arange(64)), draw(torch.arange(64, 128))


def _random_sae(kind="topk", width=64, d=16, seed=0, **options):
    sae = make_sae(kind, d, width, seed=seed, **options)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 1)))
    return sae


def fvu(sae, store) -> float:
    x = store.acts_ND
    with torch.no_grad():
        return ((x - sae(x).x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


def test_zero_decoder_residual_leaves_the_base_exactly():
    base = _random_sae("jumprelu", d=16, target_l0=4)
    res = _random_sae("topk", width=32, d=16, seed=3, k=4, decoder_bias=False)
    with torch.no_grad():
        res.W_dec_FD.zero_()
    combined = ResidualSAE(base, [res], ["medical"])
    x = torch.randn(50, 16)
    out, ref = combined(x), base(x)
    assert torch.equal(out.x_hat, ref.x_hat)
    assert torch.equal(out.f[:, :64], ref.f)  # the base block comes first
    assert out.f.shape == (50, 64 + 32)


def test_stacked_residuals_sum_and_encode_what_is_left():
    base = _random_sae("topk", d=16, k=8)
    r1 = _random_sae("topk", width=32, d=16, seed=5, k=4, decoder_bias=False)
    r2 = _random_sae("relu", width=24, d=16, seed=7, decoder_bias=False)
    combined = ResidualSAE(base, [r1, r2], ["medical", "legal"])
    x = torch.randn(40, 16, dtype=torch.float64)
    combined = combined.double()
    with torch.no_grad():
        out = combined(x)
        xb = base(x).x_hat
        e1 = x - xb
        x1 = r1(e1).x_hat
        x2 = r2(e1 - x1).x_hat
    torch.testing.assert_close(out.x_hat, xb + x1 + x2, rtol=0, atol=1e-12)
    assert [b.name for b in combined.blocks] == ["base", "medical", "legal"]
    assert combined.block_of(64 + 32 + 3) == ("legal", 3)
    assert combined.block_of(70) == ("medical", 6)
    codes = combined.encode_blocks(x)
    torch.testing.assert_close(torch.cat(list(codes.values()), -1), out.f, rtol=0, atol=0)
    with pytest.raises(ValueError, match="outside"):
        combined.block_of(64 + 32 + 24)


def test_train_residual_never_touches_the_base_and_reduces_domain_error():
    general, domain = _two_domains()
    base = saelab.train_sae(
        general,
        kind="topk",
        width=64,
        k=4,
        max_tokens=60_000,
        batch_size=256,
        lr=3e-3,
        progress=False,
    )
    before = {k: v.clone() for k, v in base.state_dict().items()}
    combined = saelab.train_residual(
        base,
        domain,
        width=64,
        kind="topk",
        k=4,
        max_tokens=60_000,
        batch_size=256,
        lr=3e-3,
        name="domain",
        progress=False,
    )
    for name, value in base.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(not p.requires_grad and p.grad is None for p in combined.base.parameters())
    assert torch.equal(combined.residuals[0].b_dec_D, torch.zeros(32))
    assert "b_dec_D" not in dict(combined.residuals[0].named_parameters())
    # The base saw none of the domain's features; the residual must recover most of them,
    # while the general text is not made worse by more than a little.
    base_fvu, combined_fvu = fvu(base, domain), fvu(combined, domain)
    assert base_fvu > 0.5 and combined_fvu < 0.5 * base_fvu, (base_fvu, combined_fvu)
    assert fvu(combined, general) < fvu(base, general) + 0.05

    # A second residual on the same domain stacks on what the first left.
    stacked = saelab.train_residual(
        combined,
        domain,
        width=32,
        kind="topk",
        k=2,
        max_tokens=20_000,
        batch_size=256,
        lr=3e-3,
        name="domain2",
        progress=False,
    )
    assert [b.name for b in stacked.blocks] == ["base", "domain", "domain2"]
    assert stacked.residuals[0] is combined.residuals[0]
    assert fvu(stacked, domain) <= combined_fvu + 1e-3


def test_error_store_is_the_base_error():
    general, _ = _two_domains(n=2000)
    base = _random_sae("topk", width=64, d=32, k=4)
    errors = ErrorStore(general, base, chunk=300)
    idx = torch.tensor([0, 5, 1999])
    with torch.no_grad():
        expected = general.get(idx) - base(general.get(idx)).x_hat
    torch.testing.assert_close(errors.get(idx), expected, rtol=0, atol=0)
    assert len(errors) == 2000 and errors.d_in == 32


def test_save_load_bit_exact(tmp_path):
    base = _random_sae("jumprelu", d=16, target_l0=4)
    combined = ResidualSAE(
        base,
        [
            _random_sae("topk", width=32, d=16, seed=3, k=4, decoder_bias=False),
            _random_sae("batchtopk", width=16, d=16, seed=4, k=2, decoder_bias=False),
        ],
        ["medical", "legal"],
    )
    combined.save(tmp_path / "res")
    loaded = load_sae(tmp_path / "res")
    assert isinstance(loaded, ResidualSAE) and loaded.cfg.blocks == ["base", "medical", "legal"]
    a, b = combined.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(30, 16)
    assert torch.equal(combined(x).x_hat, loaded(x).x_hat)
    assert all(not p.requires_grad for p in loaded.base.parameters())


def test_bad_residuals_are_refused(tmp_path):
    base = _random_sae("topk", d=16, k=4)
    with pytest.raises(ValueError, match="decoder bias"):
        ResidualSAE(base, [_random_sae("topk", width=8, d=16, k=2)])
    with pytest.raises(ValueError, match="d_in"):
        ResidualSAE(base, [_random_sae("topk", width=8, d=12, k=2, decoder_bias=False)])
    with pytest.raises(ValueError, match="unique"):
        ResidualSAE(base, [_random_sae("topk", width=8, d=16, k=2, decoder_bias=False)], ["base"])
    with pytest.raises(ValueError, match="train_residual"):
        make_sae("residual", 16, 8)
    general, _ = _two_domains(n=600)
    with pytest.raises(ValueError, match="d_in"):
        saelab.train_residual(base, general, width=8, k=2)
    combined = ResidualSAE(
        base, [_random_sae("topk", width=8, d=16, k=2, decoder_bias=False)], ["med"]
    )
    combined.save(tmp_path / "res")
    (tmp_path / "res" / "med" / "sae.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="sae.safetensors"):
        load_sae(tmp_path / "res")


def test_residual_sae_is_an_sae_with_kind_knowledge():
    """A ResidualSAE is an `SAE` (so every SAE consumer takes it); what it reports about itself
    is the sum over its blocks."""
    from saelab.sae import SAE

    base = make_sae("topk", 16, 32, k=2)
    residual = make_sae("topk", 16, 8, k=3, decoder_bias=False)
    sae = ResidualSAE(base, [residual], ["medical"])
    assert isinstance(sae, SAE)
    assert sae.encoder_multiply_adds() == (32 + 8) * 16
    assert sae.target_l0 == 2 + 3
    assert (
        sae.latent_label(33) == "medical latent 1 (#33)"
        and sae.latent_label(3) == "base latent 3 (#3)"
    )
    assert ResidualSAE(make_sae("relu", 16, 32), [residual], ["medical"]).target_l0 is None
