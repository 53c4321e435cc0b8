"""Concept alignment (saelab.features): medical pieces and whole words, frequent tokens and
vocabulary shares, on a hand-built store and recounted by hand on the real one."""

import re
from collections import Counter

import pytest
import torch

from saelab.activations import ActivationStore, StoreInfo
from saelab.data import WORD_START_MARKERS, vocabulary
from saelab.features import (
    FeatureStats,
    concept_alignment,
    frequent_tokens,
    is_medical_piece,
    vocabulary_shares,
    word_at,
)


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
