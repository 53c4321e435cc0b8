import pytest
import torch

import saelab
from saelab.activations import ActivationStore, StoreInfo
from saelab.features import (
    FeatureStats,
    concept_alignment,
    feature_stats,
    frequent_tokens,
    general_words,
    is_medical_piece,
    latent_histogram,
    latents_on_text,
    logit_effects,
    medical_vocabulary,
    token_str,
    top_contexts,
    word_at,
)

HOOK = "resid_post.2"


@pytest.fixture(scope="module")
def store(stories, medical_texts):
    return saelab.harvest(stories, HOOK, medical_texts, max_tokens=2048, ctx_len=64, progress=False)


@pytest.fixture(scope="module")
def sae():
    return saelab.make_sae("topk", 64, 128, k=8, seed=1)


@pytest.fixture(scope="module")
def dense(sae, store):
    with torch.no_grad():
        return sae.encode(store.get(torch.arange(len(store))))


@pytest.fixture(scope="module")
def stats(sae, store):
    return feature_stats(sae, store, top_k=10, batch_size=300)  # many batches: exercises the merge


def test_feature_stats_match_brute_force(stats, dense, store):
    fired = dense != 0
    count = fired.sum(0)
    assert stats.n_tokens == len(store)
    assert torch.equal(stats.count_F, count)
    torch.testing.assert_close(stats.density_F, count.double() / len(store))
    mean = torch.where(count > 0, dense.double().sum(0) / count.clamp_min(1), 0.0)
    torch.testing.assert_close(stats.mean_act_F, mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(stats.max_act_F, dense.max(0).values)
    assert (count > 10).sum() > 50  # the test is about the top-k merge, so most latents must fire often
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


def test_latent_histogram_counts_firing_tokens(sae, store, dense):
    latent = int((dense != 0).sum(0).argmax())
    hist = latent_histogram(sae, store, latent, n_bins=12, batch_size=500)
    assert hist.counts_B.shape == (12,) and hist.edges_B1.shape == (13,)
    assert int(hist.counts_B.sum()) == int((dense[:, latent] != 0).sum())
    assert hist.edges_B1[-1] == pytest.approx(float(dense[:, latent].max()))


def test_top_contexts_neighbours_come_from_tokens(stats, store, stories, sae, dense):
    tok = stories.tokenizer
    latent = int(stats.count_F.argmax())
    contexts = top_contexts(stats, store, tok, latent, window=3, sae=sae)
    assert len(contexts) == 10
    ctx_len = store.tokens_CT.shape[1]
    for c in contexts:
        row_ids = store.tokens_CT[c.context]
        assert c.context == store.context_N[c.row] and c.position == store.position_N[c.row]
        assert c.token == token_str(tok, row_ids[c.position])
        assert c.left == [token_str(tok, i) for i in row_ids[max(0, c.position - 3) : c.position].tolist()]
        assert c.right == [token_str(tok, i) for i in row_ids[c.position + 1 : min(ctx_len, c.position + 4)].tolist()]
        assert c.value == pytest.approx(float(dense[c.row, latent]))
        assert len(c.window_acts) == len(c.left) + 1 + len(c.right)
        assert c.window_acts[len(c.left)] == pytest.approx(c.value, abs=1e-6)
        for offset, act in enumerate(c.window_acts):
            pos = c.position - len(c.left) + offset
            where = ((store.context_N == c.context) & (store.position_N == pos)).nonzero()
            if len(where) == 0:
                assert act is None  # BOS or a dropped sink
            else:
                assert act == pytest.approx(float(dense[int(where[0, 0]), latent]), abs=1e-6)
    assert top_contexts(stats, store, tok, latent)[0].window_acts is None


def test_logit_effects_by_hand(sae, stories):
    hf = stories._module
    latent = 5
    effects = logit_effects(sae, stories, latent, k=7)
    logits = hf.lm_head.weight @ (sae.W_dec_FD[latent] * hf.model.norm.weight)
    top, bottom = logits.topk(7), (-logits).topk(7)
    torch.testing.assert_close(effects.promoted_values_K, top.values.detach())
    torch.testing.assert_close(effects.suppressed_values_K, -bottom.values.detach())
    assert effects.promoted == [token_str(stories.tokenizer, i) for i in top.indices.tolist()]
    assert effects.suppressed == [token_str(stories.tokenizer, i) for i in bottom.indices.tolist()]


def test_latents_on_text(sae, stories):
    text = "The patient had a fever and a cough."
    out = latents_on_text(sae, stories, HOOK, text, top_n=5)
    ids = stories.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [t.token for t in out] == [token_str(stories.tokenizer, i) for i in ids]
    for entry in out:
        values = [v for _, v in entry.latents]
        assert 0 < len(values) <= 5 and values == sorted(values, reverse=True)
        assert all(v != 0 for v in values)
    # Same codes as the harvest path on the same BOS-prefixed tokens.
    bos_ids = torch.tensor([[stories.tokenizer.bos_token_id, *ids]])
    store = saelab.harvest(stories, HOOK, bos_ids, max_tokens=0, sink_factor=0, progress=False)
    with torch.no_grad():
        f = sae.encode(store.get(torch.arange(len(store))))
    for t, entry in enumerate(out):
        latent, value = entry.latents[0]
        assert value == pytest.approx(float(f[t].max()), abs=1e-5) and float(f[t, latent]) == pytest.approx(value, abs=1e-5)


def test_medical_vocabulary():
    vocab, raw = medical_vocabulary(), medical_vocabulary(exclude_general=0)
    assert len(vocab) > 1000
    assert {"leukemia", "apoptosis", "mitochondria"} <= vocab
    assert all(len(w) >= 4 and w.isalpha() and w == w.lower() for w in vocab)
    # MeSH's "Time Factors", "Middle Aged": in the raw set, gone once general words are removed
    assert {"time", "middle"} <= raw and not {"time", "middle"} & vocab
    assert vocab == raw - general_words(1000)


def test_is_medical_piece():
    vocab = {"leukemia", "tumor"}
    assert is_medical_piece("▁leuk", vocab) and is_medical_piece("Ġtumor", vocab) and is_medical_piece("Leukemia", vocab)
    assert not is_medical_piece("▁leu", vocab)  # too short
    assert not is_medical_piece("▁tumors", vocab)  # not a prefix
    assert not is_medical_piece(",", vocab)


def test_frequent_tokens(store, stories):
    freq = frequent_tokens(store, stories.tokenizer, n=20)
    seen = store.tokens_CT[store.context_N.long(), store.position_N.long()].long()
    counts = torch.bincount(seen)
    assert torch.equal(freq.counts_N, counts[freq.ids_N])
    assert int(freq.counts_N.min()) >= int(counts.sort(descending=True).values[19])
    assert len(freq.tokens) == 20


class _PieceTokenizer:
    """Just `convert_ids_to_tokens`, over a tiny made-up vocabulary."""

    pieces = ("<s>", "▁leuk", "emia", "▁the", ",", "▁tumor", "▁cat", "▁and")

    def convert_ids_to_tokens(self, i):
        return self.pieces[i]


def test_concept_alignment_hand_built():
    # One context whose rows are tokens 1..7 (positions 1..7; position 0 is BOS, not a row).
    tokens_CT = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]])
    n = 7
    store = ActivationStore(torch.zeros(n, 2), torch.zeros(n, dtype=torch.int32), torch.arange(1, 8, dtype=torch.int32),
                            tokens_CT, StoreInfo(model="toy", hookpoint="resid_post.0", d_in=2, n_tokens=n))
    # rows: 0 "▁leuk", 1 "emia", 2 "▁the", 3 ",", 4 "▁tumor", 5 "▁cat", 6 "▁and"
    top_index_FK = torch.tensor([
        [0, 4, 2],    # 2 of 3 medical -> medical
        [2, 3, 6],    # 3 of 3 frequent -> frequent
        [0, 2, 5],    # 1 medical, 1 frequent of 3 -> neither
        [4, -1, -1],  # fired once, on "▁tumor" -> medical
        [-1, -1, -1], # dead
        [1, 0, 6],    # "emia" is part of "leukemia": 2 of 3 medical as whole words, 1 of 3 as pieces
    ])
    count_F = torch.tensor([5, 5, 5, 1, 0, 5])
    stats = FeatureStats(n, count_F, count_F / n, torch.ones(6, dtype=torch.float64), torch.ones(6),
                         torch.where(top_index_FK >= 0, 1.0, 0.0), top_index_FK)
    frequent = torch.tensor([3, 4, 7])  # "▁the", ",", "▁and"
    result = concept_alignment(None, store, _PieceTokenizer(), vocabulary={"leukemia", "tumor"}, frequent=frequent,
                               top_k=3, stats=stats)
    assert result["n_alive"] == 5
    assert result["medical_latents"] == [0, 3, 5] and result["frequent_latents"] == [1]
    assert result["medical_share"] == pytest.approx(0.6) and result["frequent_share"] == pytest.approx(0.2)
    pieces = concept_alignment(None, store, _PieceTokenizer(), vocabulary={"leukemia", "tumor"}, frequent=frequent,
                               top_k=3, stats=stats, whole_words=False)
    assert pieces["medical_latents"] == [0, 3]


def test_word_at():
    tok = _PieceTokenizer()
    ids = [0, 1, 2, 3, 4, 5, 6, 7]
    words = [word_at(ids, t, tok.convert_ids_to_tokens) for t in range(1, 8)]
    assert words == ["leukemia", "leukemia", "the", "", "tumor", "cat", "and"]
    bpe = {0: "Ġhyper", 1: "tens", 2: "ion", 3: ".", 4: "Ġcat"}
    assert [word_at([0, 1, 2, 3, 4], t, bpe.__getitem__) for t in range(5)] == ["hypertension"] * 3 + ["", "cat"]


def test_concept_alignment_real(sae, store, stories, stats):
    result = concept_alignment(sae, store, stories.tokenizer, stats=stats)
    assert result["n_alive"] == int((stats.count_F > 0).sum())
    assert 0 <= result["medical_share"] <= 1 and 0 <= result["frequent_share"] <= 1
    assert result["n_frequent"] > 0  # random latents on a tiny vocabulary mostly fire on frequent tokens


def test_feature_stats_on_memory_mapped_store(sae, store, stats, tmp_path):
    mapped = ActivationStore.load(store.save(tmp_path / "acts", shard_tokens=700))
    again = feature_stats(sae, mapped, top_k=10, batch_size=512)
    assert torch.equal(again.top_values_FK, stats.top_values_FK)
    assert torch.equal(again.count_F, stats.count_F)
