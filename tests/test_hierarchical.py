"""HierarchicalTopK: the loss is the mean of per-k TopK losses; any k <= K is a TopK SAE."""

import pytest
import torch
from synthetic import sparse_dictionary_store

import saelab
from saelab.sae import make_sae
from saelab.sae.base import TrainContext
from saelab.sae.hierarchical import loss_ks

D, F, K = 16, 64, 8


def perturbed(dtype=torch.float64, **options):
    sae = make_sae("hierarchical_topk", D, F, seed=1, dtype=dtype, k=K, **options)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        sae.W_enc_DF.add_(0.1 * torch.randn(D, F, generator=g, dtype=dtype))
        sae.b_enc_F.copy_(0.3 * torch.randn(F, generator=g, dtype=dtype))
        sae.b_dec_D.copy_(0.5 * torch.randn(D, generator=g, dtype=dtype))
    return sae


def topk_twin(sae, k: int):
    """A plain TopK SAE with the same weights and that k."""
    twin = make_sae("topk", D, F, dtype=sae.W_dec_FD.dtype, k=k)
    twin.load_state_dict(sae.state_dict())
    return twin


@pytest.mark.parametrize("gram_loss", [True, False])
@pytest.mark.parametrize(
    "k_set, k_weighting",
    [
        ("all", "equal"),
        ("geometric", "equal"),
        ([3, 5], "equal"),
        ("geometric", "inverse_k"),
        ("all", "inverse_sqrt_k"),
    ],
)
def test_loss_is_mean_of_per_k_losses_the_slow_way(k_set, k_weighting, gram_loss):
    sae = perturbed(k_set=k_set, gram_loss=gram_loss, k_weighting=k_weighting)
    x = torch.randn(40, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    out = sae.training_loss(x, TrainContext(0, 10, None))
    ks = loss_ks(k_set, K)
    per_k = torch.stack([(x - topk_twin(sae, j)(x).x_hat).pow(2).sum(-1).mean() for j in ks])
    # the weightings written out by hand: w_j = (1/j) / Σ 1/j, (1/√j) / Σ 1/√j
    power = {"equal": 0.0, "inverse_k": 1.0, "inverse_sqrt_k": 0.5}[k_weighting]
    w = torch.tensor([j**-power for j in ks], dtype=x.dtype)
    slow = (per_k * w).sum() / w.sum()
    torch.testing.assert_close(out.loss, slow, rtol=1e-12, atol=1e-12)
    full = (x - topk_twin(sae, K)(x).x_hat).pow(2).sum(-1).mean()
    torch.testing.assert_close(out.mse, full, rtol=1e-12, atol=1e-12)
    assert abs(out.loss.item() - out.mse.item()) > 1.0  # the per-k average is not the full-K error


def test_gram_and_cumsum_losses_agree_in_value_and_gradient():
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(5))
    dead = torch.zeros(F, dtype=torch.bool)
    dead[::4] = True
    results = {}
    for gram in (True, False):
        sae = perturbed(dtype=torch.float32, gram_loss=gram, k_set="geometric")
        out = sae.training_loss(x, TrainContext(0, 10, dead))
        out.loss.backward()
        results[gram] = (out, {n: p.grad.clone() for n, p in sae.named_parameters()})
    (fast, fast_grads), (ref, ref_grads) = results[True], results[False]
    assert fast.terms["auxk"] > 0  # AuxK active in both
    torch.testing.assert_close(fast.loss, ref.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.mse, ref.mse, rtol=1e-5, atol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_loss_ks():
    assert loss_ks("all", 4) == [1, 2, 3, 4]
    assert loss_ks("geometric", 64) == [1, 2, 4, 8, 16, 32, 64]
    assert loss_ks("geometric", 12) == [1, 2, 4, 8, 12]
    assert loss_ks([8, 2, 2], 8) == [2, 8]
    with pytest.raises(ValueError, match="1..8"):
        loss_ks([9], 8)
    with pytest.raises(ValueError, match="k_set"):
        loss_ks("some", 8)


@pytest.mark.parametrize("k", [1, 3, K])
def test_forward_at_k_is_a_topk_sae_with_that_k(k):
    sae = perturbed(dtype=torch.float32)
    x = torch.randn(50, D)
    out, ref = sae(x, k=k), topk_twin(sae, k)(x)
    assert torch.equal(out.x_hat, ref.x_hat) and torch.equal(out.f, ref.f)
    assert ((out.f > 0).sum(-1) <= k).all() and ((out.f > 0).sum(-1) == k).any()
    with pytest.raises(ValueError, match=f"1..{K}"):
        sae(x, k=K + 1)


def test_one_sae_serves_small_k_as_well_as_a_topk_trained_there():
    """The point of the method: a TopK SAE trained at K degrades at k < K and one trained at
    k is worse at K; one HierarchicalTopK SAE matches each at its own k (measured: at k=4
    FVU 0.305 vs 0.396 for TopK-8 and 0.31 for TopK-4; at k=8 0.216 vs 0.273 for TopK-4)."""
    store, _ = sparse_dictionary_store(d=32, n_features=128, n=30_000, k=4)
    common = {"width": 128, "max_tokens": 90_000, "batch_size": 256, "lr": 3e-3, "progress": False}
    hier = saelab.train_sae(store, kind="hierarchical_topk", k=8, **common)
    topk8 = saelab.train_sae(store, kind="topk", k=8, **common)
    topk4 = saelab.train_sae(store, kind="topk", k=4, **common)
    x = store.acts_ND[:5000]
    var = (x - x.mean(0)).pow(2).sum()

    def fvu(sae, k):
        with torch.no_grad():
            return ((x - sae(x, k=k).x_hat).pow(2).sum() / var).item()

    assert fvu(hier, 4) < 0.85 * fvu(topk8, 4), (fvu(hier, 4), fvu(topk8, 4))
    assert fvu(hier, 4) < fvu(topk4, 4) + 0.02, (fvu(hier, 4), fvu(topk4, 4))
    assert fvu(hier, 8) < 0.9 * fvu(topk4, 8), (fvu(hier, 8), fvu(topk4, 8))
    assert fvu(hier, 1) > fvu(hier, 2) > fvu(hier, 4) > fvu(hier, 8)


def test_evaluate_one_row_per_k(stories):
    texts = saelab.load_corpus("medical", split="train", max_texts=200)
    store = saelab.harvest(stories, "resid_post.2", texts, max_tokens=4096, progress=False)
    sae = saelab.train_sae(
        store, kind="hierarchical_topk", width=128, k=16, batch_size=128, progress=False
    )
    table = saelab.evaluate(
        sae, stories, "resid_post.2", texts[100:], max_tokens=1024, ks=[2, 4, 16], progress=False
    )
    assert table["k"].tolist() == [2, 4, 16]
    assert table["sae"].tolist() == [
        "hierarchical_topk-128@k2",
        "hierarchical_topk-128@k4",
        "hierarchical_topk-128@k16",
    ]
    assert (table["l0"] <= table["k"] + 1e-9).all()
    assert (
        table["fvu"].is_monotonic_decreasing
        and table["ce_loss_recovered"].iloc[-1] > table["ce_loss_recovered"].iloc[0]
    )
    jump = saelab.make_sae("jumprelu", 64, 32)
    with pytest.raises(ValueError, match="fixed sparsity"):
        saelab.evaluate(
            jump, stories, "resid_post.2", texts[100:], max_tokens=256, ks=[2], progress=False
        )
