"""saelab.features statistics against brute force: counts, densities, the top-k merge over
batches, histograms, the sparse code index, quantile samples, the informative first latent."""

import pytest
import torch

from saelab.activations import ActivationStore
from saelab.features import (
    FeatureStats,
    LatentCodes,
    codes_at,
    feature_stats,
    informative_latent,
    latent_codes,
    latent_histogram,
    quantile_samples,
    sparse_codes,
    stats_from_codes,
)


def test_feature_stats_match_brute_force(stats, dense, store):
    fired = dense != 0
    count = fired.sum(0)
    assert stats.n_tokens == len(store)
    assert torch.equal(stats.count_F, count)
    torch.testing.assert_close(stats.density_F, count.double() / len(store))
    mean = torch.where(count > 0, dense.double().sum(0) / count.clamp_min(1), 0.0)
    torch.testing.assert_close(stats.mean_act_F, mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(stats.max_act_F, dense.max(0).values)
    # the test is about the top-k merge, so most latents must fire often
    assert (count > 10).sum() > 50
    for f in range(dense.shape[1]):
        k = min(10, int(count[f]))
        values, index = dense[:, f].topk(k)
        torch.testing.assert_close(stats.top_values_FK[f, :k], values)
        assert set(stats.top_index_FK[f, :k].tolist()) == set(index.tolist())
        assert (stats.top_index_FK[f, k:] == -1).all() and (stats.top_values_FK[f, k:] == 0).all()
        assert (stats.top_values_FK[f, :k].diff() <= 0).all()


def test_feature_stats_same_for_any_batch_size(sae, store, stats):
    again = feature_stats(sae, store, top_k=10, batch_size=4096)
    assert torch.equal(again.top_values_FK, stats.top_values_FK)
    assert torch.equal(again.count_F, stats.count_F)


def test_feature_stats_of_a_plain_tensor(sae, store, stats):
    x_ND = store.get(torch.arange(len(store)))
    again = feature_stats(sae, x_ND, top_k=10, batch_size=300)
    assert torch.equal(again.top_index_FK, stats.top_index_FK)
    assert torch.equal(again.count_F, stats.count_F)
    hist = latent_histogram(sae, x_ND, 3, n_bins=5)
    assert torch.equal(hist.counts_B, latent_histogram(sae, store, 3, n_bins=5).counts_B)


def test_latent_histogram_counts_firing_tokens(sae, store, dense):
    latent = int((dense != 0).sum(0).argmax())
    hist = latent_histogram(sae, store, latent, n_bins=12, batch_size=500)
    assert hist.counts_B.shape == (12,) and hist.edges_B1.shape == (13,)
    assert int(hist.counts_B.sum()) == int((dense[:, latent] != 0).sum())
    assert hist.edges_B1[-1] == pytest.approx(float(dense[:, latent].max()))


def test_feature_stats_on_memory_mapped_store(sae, store, stats, tmp_path):
    mapped = ActivationStore.load(store.save(tmp_path / "acts", shard_tokens=700))
    again = feature_stats(sae, mapped, top_k=10, batch_size=512)
    assert torch.equal(again.top_values_FK, stats.top_values_FK)
    assert torch.equal(again.count_F, stats.count_F)


def test_sparse_codes_equal_the_dense_codes(sae, store, dense, stats):
    codes = sparse_codes(sae, store, batch_size=300)
    for f in (0, 17, int(stats.count_F.argmax())):
        column = codes.column(f)
        (rows,) = dense[:, f].nonzero(as_tuple=True)
        assert torch.equal(column.rows_M, rows)
        torch.testing.assert_close(column.values_M, dense[rows, f])
        plain = latent_codes(sae, store, f, batch_size=500)  # the index-free path agrees
        assert torch.equal(plain.rows_M, column.rows_M)
        assert torch.equal(plain.values_M, column.values_M)
        some = torch.tensor([0, int(rows[0]), len(store) - 1])
        torch.testing.assert_close(codes_at(column, some), dense[some, f])
    again = stats_from_codes(codes, top_k=10)
    assert torch.equal(again.count_F, stats.count_F)
    torch.testing.assert_close(again.mean_act_F, stats.mean_act_F)
    assert torch.equal(again.max_act_F, stats.max_act_F)
    assert torch.equal(again.top_values_FK, stats.top_values_FK)
    listed = again.top_index_FK >= 0  # each listed row really has that code (ties: any row)
    assert torch.equal(listed, stats.top_index_FK >= 0)
    rows_FK = again.top_index_FK.clamp_min(0)
    codes_FK = dense.T.gather(1, rows_FK)
    assert torch.equal(codes_FK[listed], again.top_values_FK[listed])
    assert sparse_codes(sae, store, max_entries=int(stats.count_F.sum()) - 1) is None


def test_quantile_samples_by_hand():
    """20 firings with codes 1..20 on rows 100..119: 4 bins of 5, strongest first."""
    column = LatentCodes(torch.arange(100, 120), torch.arange(1, 21).float())
    bins = quantile_samples(column, n_bins=4, per_bin=2, seed=3)
    assert [(b.lo, b.hi, b.count) for b in bins] == [
        (16, 20, 5),
        (11, 15, 5),
        (6, 10, 5),
        (1, 5, 5),
    ]
    for b in bins:
        assert len(b.rows) == 2 and b.values == sorted(b.values, reverse=True)
        assert all(b.lo <= v <= b.hi for v in b.values)
        assert [r - 99 for r in b.rows] == b.values  # each row carries its own code
    assert quantile_samples(column, 4, 2, seed=3) == bins  # seeded: the same rows again
    few = quantile_samples(LatentCodes(torch.tensor([7, 9]), torch.tensor([0.5, 2.0])), 10, 5)
    assert [(b.rows, b.values) for b in few] == [([9], [2.0]), ([7], [0.5])]
    assert quantile_samples(LatentCodes(torch.zeros(0, dtype=torch.long), torch.zeros(0))) == []


def test_informative_latent_by_hand():
    """Densities 0.5, 0.009, 0.002, 0, 0.009 over 1000 tokens: latents 1 and 4 are the most
    frequent under 1% (tie: lower id); with everything dense, the least dense alive one."""

    def stats(counts):
        count_F = torch.tensor(counts)
        zeros = torch.zeros(len(counts))
        return FeatureStats(1000, count_F, count_F / 1000, zeros, zeros, zeros[:, None], None)

    assert informative_latent(stats([500, 9, 2, 0, 9])) == 1
    assert informative_latent(stats([500, 90, 0, 200])) == 1
    assert informative_latent(stats([0, 0])) == 0
