"""saelab.features against brute force: stats, contexts, logit effects, concepts, geometry."""

import re
from collections import Counter

import pytest
import torch
from conftest import HOOK

import saelab
from saelab.activations import ActivationStore, StoreInfo
from saelab.data import WORD_START_MARKERS, token_str, vocabulary
from saelab.features import (
    FeatureStats,
    LatentCodes,
    codes_at,
    concept_alignment,
    context_window,
    decoder_redundancy,
    decoder_similarity,
    feature_stats,
    frequent_tokens,
    informative_latent,
    is_medical_piece,
    latent_codes,
    latent_histogram,
    latents_on_text,
    logit_effects,
    logit_histogram,
    logit_vector,
    nearest_features,
    prompt_codes,
    quantile_samples,
    rank_latents,
    sparse_codes,
    stats_from_codes,
    top_contexts,
    vocabulary_shares,
    word_at,
)


@pytest.fixture(scope="module")
def store(medical_store):
    return medical_store


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


def test_top_contexts_are_whole_word_windows_from_tokens(stats, store, stories, sae, dense):
    tok = stories.tokenizer
    special = set(tok.all_special_ids)
    latent = int(stats.count_F.argmax())
    contexts = top_contexts(stats, store, tok, latent, window=3, sae=sae)
    assert 0 < len(contexts) <= 10
    windows = set()
    for c in contexts:
        row_ids = store.tokens_CT[c.context].tolist()
        assert c.context == store.context_N[c.row] and c.position == store.position_N[c.row]
        assert c.token == token_str(tok, row_ids[c.position])
        lo, hi = c.position - len(c.left), c.position + 1 + len(c.right)
        assert c.left == [token_str(tok, i) for i in row_ids[lo : c.position]]
        assert c.right == [token_str(tok, i) for i in row_ids[c.position + 1 : hi]]
        assert not special & set(row_ids[lo:hi])  # no <s>, </s>, <unk> shown
        # at least 3 a side unless a document boundary (special token) or the end is hit
        assert len(c.left) >= 3 or lo == 0 or row_ids[lo - 1] in special
        assert len(c.right) >= 3 or hi == len(row_ids) or row_ids[hi] in special
        # whole words: the window neither starts nor ends inside a word
        assert lo == 0 or row_ids[lo - 1] in special or not token_str(tok, row_ids[lo])[0].isalnum()
        if hi < len(row_ids) and row_ids[hi] not in special:
            assert not token_str(tok, row_ids[hi])[0].isalnum()
        windows.add(tuple(row_ids[lo:hi]))
        assert c.value == pytest.approx(float(dense[c.row, latent]))
        assert c.window_acts[len(c.left)] == pytest.approx(c.value, abs=1e-6)
        for offset, act in enumerate(c.window_acts):
            pos = lo + offset
            where = ((store.context_N == c.context) & (store.position_N == pos)).nonzero()
            if len(where) == 0:
                assert act is None  # BOS or a dropped sink
            else:
                assert act == pytest.approx(float(dense[int(where[0, 0]), latent]), abs=1e-6)
    assert len(windows) == len(contexts)  # no window shown twice
    assert top_contexts(stats, store, tok, latent)[0].window_acts is None


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


def test_latents_on_text(sae, stories):
    text = "The patient had a fever and a cough."
    out = latents_on_text(sae, stories, HOOK, text, top_k=5)
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
        assert value == pytest.approx(float(f[t].max()), abs=1e-5)
        assert float(f[t, latent]) == pytest.approx(value, abs=1e-5)


def test_is_medical_piece():
    vocab = {"leukemia", "tumor"}
    assert is_medical_piece("▁leuk", vocab) and is_medical_piece("Ġtumor", vocab)
    assert is_medical_piece("Leukemia", vocab)
    assert not is_medical_piece("▁leu", vocab)  # too short
    assert not is_medical_piece("▁tumors", vocab)  # not a prefix
    assert not is_medical_piece(",", vocab)


def test_frequent_tokens(store, stories):
    freq = frequent_tokens(store, stories.tokenizer, top_k=20)
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
    store = ActivationStore(
        torch.zeros(n, 2),
        torch.zeros(n, dtype=torch.int32),
        torch.arange(1, 8, dtype=torch.int32),
        tokens_CT,
        StoreInfo(model="toy", hookpoint="resid_post.0", d_in=2, n_tokens=n),
    )
    # rows: 0 "▁leuk", 1 "emia", 2 "▁the", 3 ",", 4 "▁tumor", 5 "▁cat", 6 "▁and"
    top_index_FK = torch.tensor(
        [
            [0, 4, 2],  # 2 of 3 medical -> medical
            [2, 3, 6],  # 3 of 3 frequent -> frequent
            [0, 2, 5],  # 1 medical, 1 frequent of 3 -> neither
            [4, -1, -1],  # fired once, on "▁tumor" -> medical
            [-1, -1, -1],  # dead
            [1, 0, 6],  # "emia" of "leukemia": 2 of 3 medical as whole words, 1 of 3 as pieces
        ]
    )
    count_F = torch.tensor([5, 5, 5, 1, 0, 5])
    stats = FeatureStats(
        n,
        count_F,
        count_F / n,
        torch.ones(6, dtype=torch.float64),
        torch.ones(6),
        torch.where(top_index_FK >= 0, 1.0, 0.0),
        top_index_FK,
    )
    frequent = torch.tensor([3, 4, 7])  # "▁the", ",", "▁and"
    vocab = {"leukemia", "tumor"}
    result = concept_alignment(
        None, store, _PieceTokenizer(), vocabulary=vocab, frequent=frequent, top_k=3, stats=stats
    )
    assert result["n_alive"] == 5
    assert result["medical_latents"] == [0, 3, 5] and result["frequent_latents"] == [1]
    assert result["medical_share"] == pytest.approx(0.6)
    assert result["frequent_share"] == pytest.approx(0.2)
    pieces = concept_alignment(
        None,
        store,
        _PieceTokenizer(),
        vocabulary=vocab,
        frequent=frequent,
        top_k=3,
        stats=stats,
        whole_words=False,
    )
    assert pieces["medical_latents"] == [0, 3]


def test_word_at():
    tok = _PieceTokenizer()
    ids = [0, 1, 2, 3, 4, 5, 6, 7]
    words = [word_at(ids, t, tok.convert_ids_to_tokens) for t in range(1, 8)]
    assert words == ["leukemia", "leukemia", "the", "", "tumor", "cat", "and"]
    bpe = {0: "Ġhyper", 1: "tens", 2: "ion", 3: ".", 4: "Ġcat"}
    words = [word_at([0, 1, 2, 3, 4], t, bpe.__getitem__) for t in range(5)]
    assert words == ["hypertension"] * 3 + ["", "cat"]


def _whole_word(pieces: list[str], t: int) -> str:
    """The word around token t, read from the context's text (not through `word_at`): the
    run of letters holding the token's characters; "" when the token is not all letters."""
    texts = [p.replace(WORD_START_MARKERS[0], " ") for p in pieces]
    if not texts[t].strip().isalpha():
        return ""
    text = "".join(texts)
    at = sum(len(x) for x in texts[:t]) + len(texts[t]) - len(texts[t].lstrip())
    words = [m for m in re.finditer(r"[^\W\d_]+", text) if m.start() <= at < m.end()]
    return words[0].group().lower()


def test_concept_alignment_real(sae, store, stories, stats):
    """Counts recounted by hand: the top-10 rows of `feature_stats`, each row's whole word
    read from the context's text, the medical vocabulary of the cards, the 20 most frequent
    store tokens counted with a Counter."""
    tok = stories.tokenizer
    vocab = vocabulary("medical")
    seen = store.tokens_CT[store.context_N.long(), store.position_N.long()].tolist()
    frequent = [i for i, _ in Counter(seen).most_common(20)]
    result = concept_alignment(sae, store, tok, frequent=frequent, stats=stats)
    alive = [f for f in range(stats.count_F.shape[0]) if int(stats.count_F[f]) > 0]
    medical, frequent_latents = [], []
    for f in alive:
        rows = [r for r in stats.top_index_FK[f, :10].tolist() if r >= 0]
        words, ids = [], []
        for r in rows:
            c, t = int(store.context_N[r]), int(store.position_N[r])
            pieces = tok.convert_ids_to_tokens(store.tokens_CT[c].tolist())
            words.append(_whole_word(pieces, t))
            ids.append(int(store.tokens_CT[c, t]))
        if sum(w in vocab for w in words) > len(rows) / 2:
            medical.append(f)
        if sum(i in frequent for i in ids) > len(rows) / 2:
            frequent_latents.append(f)
    assert result["n_alive"] == len(alive)
    assert result["medical_latents"] == medical and result["frequent_latents"] == frequent_latents
    assert result["n_medical"] == len(medical) > 0  # whole words such as "drug", "surgery"
    assert 0 < result["n_frequent"] < len(alive)
    assert result["medical_share"] == len(medical) / len(alive)
    assert result["frequent_share"] == len(frequent_latents) / len(alive)


def test_vocabulary_shares_by_hand(stats, store, stories):
    vocab = {"with", "little"}
    shares = vocabulary_shares(stats, store, stories.tokenizer, vocab)
    assert shares.dtype == torch.float64 and shares.shape == stats.count_F.shape
    for f in range(len(shares)):
        rows = [r for r in stats.top_index_FK[f].tolist() if r >= 0]
        pieces = [
            stories.tokenizer.convert_ids_to_tokens(
                int(store.tokens_CT[store.context_N[r], store.position_N[r]])
            )
            for r in rows
        ]
        # a piece counts when, stripped of "▁", it is a >= 4-letter prefix of a word
        hits = [
            len(w := p.lstrip("▁").lower()) >= 4 and any(v.startswith(w) for v in vocab)
            for p in pieces
        ]
        assert shares[f] == (sum(hits) / len(hits) if hits else 0.0)
    assert shares.max() > 0


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


def test_feature_stats_on_memory_mapped_store(sae, store, stats, tmp_path):
    mapped = ActivationStore.load(store.save(tmp_path / "acts", shard_tokens=700))
    again = feature_stats(sae, mapped, top_k=10, batch_size=512)
    assert torch.equal(again.top_values_FK, stats.top_values_FK)
    assert torch.equal(again.count_F, stats.count_F)


# --- the explorer's index, samples, windows, neighbours, prompt ranking ------------------------


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


class _Pieces:
    """A tokenizer stub: token id i is piece `pieces[i]`; ids 0 and 1 are special."""

    def __init__(self, pieces):
        self.pieces = pieces

    def __call__(self, i):
        return self.pieces[i]


def test_context_window_by_hand():
    pieces = ["<s>", "</s>", " lact", "ate", " de", "hyd", "rogen", "ase", " is", " an", " enzyme"]
    piece = _Pieces(pieces)
    ids = [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 8]  # <s> lactate dehydrogenase is an enzyme</s> is
    special = {0, 1}
    assert context_window(ids, piece, 4, 1, special) == (3, 7)  # " de|hyd" grows to the word
    assert context_window(ids, piece, 2, 0, special) == (1, 3)  # "lact" grows to "lactate"
    assert context_window(ids, piece, 8, 9, special) == (1, 10)  # stops at <s> and </s>
    assert context_window(ids, piece, 11, 3, special) == (11, 12)  # a new document after </s>


def test_contexts_skip_special_tokens_and_duplicate_windows(stories):
    """Two identical contexts `<s> The patient had a fever</s> She took...`: latent 3 fires on
    " f" of "fever" in both (codes 5 and 4), on the </s> (code 9, a document boundary) and
    on " had" (code 1). The contexts are " f" once (its twin is a duplicate window), then
    " had"; the </s> is skipped; no window crosses a </s> or shows a special token. Two
    tokens a side: " had a" then " f" grown to "fever" (its pieces " f", "e", "ver")."""
    tok = stories.tokenizer
    a = tok("The patient had a fever", add_special_tokens=False)["input_ids"]
    b = tok("She took the medicine.", add_special_tokens=False)["input_ids"]
    row_ids = [tok.bos_token_id, *a, tok.eos_token_id, *b]
    tokens_CT = torch.tensor([row_ids, row_ids])
    n_pos = len(row_ids) - 1  # every position but BOS is a store row
    f_at, had_at, eos_at = row_ids.index(a[7]), row_ids.index(a[5]), len(a) + 1
    acts_ND = torch.zeros(2 * n_pos, 64)
    for c, code in ((0, 5.0), (1, 4.0)):
        acts_ND[c * n_pos + f_at - 1, 3] = code
    acts_ND[had_at - 1, 3], acts_ND[eos_at - 1, 3] = 1.0, 9.0
    store = ActivationStore(
        acts_ND,
        torch.arange(2).repeat_interleave(n_pos).int(),
        torch.arange(1, n_pos + 1).repeat(2).int(),
        tokens_CT,
        StoreInfo(model="stories260k", hookpoint=HOOK, d_in=64, n_tokens=2 * n_pos),
    )
    sae = saelab.make_sae("relu", 64, 8, seed=0)
    with torch.no_grad():
        sae.W_enc_DF.zero_()
        sae.W_enc_DF[torch.arange(8), torch.arange(8)] = 1.0
        sae.b_enc_F.zero_()
        sae.b_dec_D.zero_()
    stats = feature_stats(sae, store, top_k=5)
    contexts = top_contexts(stats, store, tok, 3, window=2)
    assert [(c.context, c.position, c.value) for c in contexts] == [
        (0, f_at, 5.0),
        (0, had_at, 1.0),
    ]
    first = contexts[0]
    assert "".join([*first.left, first.token, *first.right]) == " had a fever"
    for c in contexts:
        shown = "".join([*c.left, c.token, *c.right])
        assert "<s>" not in shown and "</s>" not in shown and "She" not in shown


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


def test_rank_latents_and_prompt_codes(sae, stories):
    text = "The patient had a fever."
    codes = prompt_codes(sae, stories, HOOK, text)
    ids = stories.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert codes.tokens == [token_str(stories.tokenizer, i) for i in ids]
    assert codes.codes_TF.shape == (len(ids), 128)
    for t in range(len(ids)):
        ranked = rank_latents(codes.codes_TF[t], top_k=6)
        by_hand = sorted(
            ((f, v) for f, v in enumerate(codes.codes_TF[t].tolist()) if v != 0),
            key=lambda fv: (-fv[1], fv[0]),
        )[:6]
        assert ranked == by_hand
    assert rank_latents(torch.tensor([0.0, 2.0, 0.0, 2.0, 1.0]), 10) == [
        (1, 2.0),
        (3, 2.0),
        (4, 1.0),
    ]


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


def test_logit_histogram_covers_the_vocabulary(sae, stories):
    logits_V = logit_vector(sae, stories, 5)
    hf = stories._module
    by_hand = (hf.lm_head.weight @ (sae.W_dec_FD[5] * hf.model.norm.weight)).detach()
    torch.testing.assert_close(logits_V, by_hand)
    hist = logit_histogram(logits_V, n_bins=20)
    assert int(hist.counts_B.sum()) == len(logits_V) == 512
    assert float(hist.edges_B1[0]) == pytest.approx(float(by_hand.min()))
    assert float(hist.edges_B1[-1]) == pytest.approx(float(by_hand.max()))
