"""A latent's decoder row (saelab.features) against brute force: its effect on the logits and
its cosines to other rows (similarity, redundancy of a residual block, nearest features)."""

import pytest
import torch

import saelab
from saelab.data import token_str
from saelab.features import (
    decoder_redundancy,
    decoder_similarity,
    logit_effects,
    logit_histogram,
    logit_vector,
    nearest_features,
)


def test_logit_effects_by_hand(sae, stories):
    hf = stories._module
    latent = 5
    effects = logit_effects(sae, stories, latent, top_k=7)
    logits = hf.lm_head.weight @ (sae.W_dec_FD[latent] * hf.model.norm.weight)
    top, bottom = logits.topk(7), (-logits).topk(7)
    torch.testing.assert_close(effects.promoted_values_K, top.values.detach())
    torch.testing.assert_close(effects.suppressed_values_K, -bottom.values.detach())
    assert effects.promoted == [token_str(stories.tokenizer, i) for i in top.indices.tolist()]
    assert effects.suppressed == [token_str(stories.tokenizer, i) for i in bottom.indices.tolist()]


def test_logit_histogram_covers_the_vocabulary(sae, stories):
    logits_V = logit_vector(sae, stories, 5)
    hf = stories._module
    by_hand = (hf.lm_head.weight @ (sae.W_dec_FD[5] * hf.model.norm.weight)).detach()
    torch.testing.assert_close(logits_V, by_hand)
    hist = logit_histogram(logits_V, n_bins=20)
    assert int(hist.counts_B.sum()) == len(logits_V) == 512
    assert float(hist.edges_B1[0]) == pytest.approx(float(by_hand.min()))
    assert float(hist.edges_B1[-1]) == pytest.approx(float(by_hand.max()))


def _cosines(a_FD: torch.Tensor, b_FD: torch.Tensor) -> torch.Tensor:
    a, b = a_FD.double(), b_FD.double()
    return (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T


@pytest.mark.parametrize("absolute", [False, True])
def test_decoder_similarity_brute_force(absolute):
    a = saelab.make_sae("topk", 64, 150, k=8, seed=3)
    b = saelab.make_sae("relu", 64, 90, seed=4)
    a.fold_input_scale(2.5)  # saved SAEs have row norms 1/input_scale: cosines must normalise
    signed = _cosines(a.W_dec_FD, b.W_dec_FD)
    want = (signed.abs() if absolute else signed).topk(3, dim=1)
    other = (signed if absolute else signed.abs()).topk(3, dim=1)
    assert not torch.equal(want.indices, other.indices)  # the flag changes the answer
    for chunk in (7, None):  # 7 < F_a: 22 chunks, the last one short
        got = decoder_similarity(a, b, top_k=3, chunk=chunk, absolute=absolute)
        assert got.values_FK.shape == got.indices_FK.shape == (150, 3)
        torch.testing.assert_close(got.values_FK.double(), want.values, atol=1e-6, rtol=0)
        assert torch.equal(got.indices_FK, want.indices)
    # a plain [F, D] tensor is an SAE's decoder
    same = decoder_similarity(a.W_dec_FD, b, top_k=3, absolute=absolute)
    assert torch.equal(same.indices_FK, want.indices)


def test_decoder_similarity_exclude_self():
    sae = saelab.make_sae("topk", 64, 120, k=8, seed=5)
    cos = _cosines(sae.W_dec_FD, sae.W_dec_FD).fill_diagonal_(float("-inf"))
    got = decoder_similarity(sae, sae, top_k=2, chunk=16, exclude_self=True)
    want = cos.topk(2, dim=1)
    torch.testing.assert_close(got.values_FK.double(), want.values, atol=1e-6, rtol=0)
    assert torch.equal(got.indices_FK, want.indices)
    assert not (got.indices_FK == torch.arange(120)[:, None]).any()
    # without the exclusion every row's nearest row is itself, at cosine 1
    plain = decoder_similarity(sae, sae, chunk=16)
    assert torch.equal(plain.indices_FK[:, 0], torch.arange(120))
    torch.testing.assert_close(plain.values_FK[:, 0], torch.ones(120))
    with pytest.raises(ValueError, match="top_k"):
        decoder_similarity(sae, sae, top_k=120, exclude_self=True)
    with pytest.raises(ValueError, match="exclude_self"):
        decoder_similarity(sae, sae.W_dec_FD[:50], exclude_self=True)
    with pytest.raises(ValueError, match="width 64 and 32"):
        decoder_similarity(sae, saelab.make_sae("relu", 32, 10))


def test_decoder_redundancy_brute_force():
    base = saelab.make_sae("topk", 64, 80, k=8, seed=1)
    residual = saelab.make_sae("topk", 64, 40, k=4, seed=2, decoder_bias=False)
    residual.fold_input_scale(3.0)
    combined = saelab.ResidualSAE(base, [residual], ["medical"])
    red = decoder_redundancy(combined, chunk=9)
    cos = _cosines(combined.W_dec_FD, combined.W_dec_FD).abs()
    torch.testing.assert_close(red.block_F.double(), cos[80:, :80].max(1).values, atol=1e-6, rtol=0)
    own = cos[:80, :80].fill_diagonal_(0)
    torch.testing.assert_close(red.reference_F.double(), own.max(1).values, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="residual SAE"):
        decoder_redundancy(base)
    with pytest.raises(ValueError, match="no block 'law'"):
        decoder_redundancy(combined, block="law")


def test_nearest_features_brute_force():
    a = saelab.make_sae("topk", 64, 150, k=8, seed=3)
    b = saelab.make_sae("relu", 64, 90, seed=4)
    cos_aa, cos_ab = _cosines(a.W_dec_FD, a.W_dec_FD), _cosines(a.W_dec_FD, b.W_dec_FD)
    near = nearest_features(a, 7, {"a": a, "layer 3": b}, top_k=3)
    own = cos_aa[7].clone()
    own[7] = float("-inf")
    want_a, want_b = own.topk(3).indices.tolist(), cos_ab[7].topk(3).indices.tolist()
    assert [(n.source, n.latent) for n in near] == [("a", i) for i in want_a] + [
        ("layer 3", i) for i in want_b
    ]
    assert near[0].cosine == pytest.approx(float(own.max().detach()), abs=1e-6)
    assert int(own.argmax()) == near[0].latent  # the brute-force argmax, itself left out
    assert [n.source for n in nearest_features(a, 7, top_k=2)] == ["this SAE"] * 2
