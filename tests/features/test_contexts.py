"""What a latent fires on (saelab.features): whole-word context windows from the store's
tokens, the codes of a typed prompt, latents ranked on one token."""

import pytest
import torch
from conftest import HOOK
from feature_helpers import identity_relu_sae

import saelab
from saelab.activations import ActivationStore, StoreInfo
from saelab.data import token_str
from saelab.features import (
    context_window,
    feature_stats,
    latents_on_text,
    prompt_codes,
    rank_latents,
    top_contexts,
)


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
    sae = identity_relu_sae(8)
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
