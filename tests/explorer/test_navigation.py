"""FeatureExplorer on stories260K: moving between latents with the buttons, the top-token
search and the most-medical button."""

import torch
from conftest import HOOK
from feature_explorer_helpers import activating_tokens, alive
from feature_helpers import identity_relu_sae

from saelab.activations import ActivationStore, StoreInfo
from saelab.features import (
    FeatureStats,
    highest_share_latent,
    is_medical_piece,
    matching_pieces,
    search_top_tokens,
    top_contexts,
)
from saelab.widgets import FeatureExplorer


def test_search_lists_latents_with_that_top_token(explorer, stories, store):
    stats = explorer.stats
    # a top token that is a real word, so the query is specific
    latent, query = next(
        (f, c.token.strip())
        for f in alive(explorer)
        for c in top_contexts(stats, store, stories.tokenizer, f, window=0)
        if len(c.token.strip()) >= 3 and c.token.strip().isalpha()
    )
    explorer.search.value = query.upper()  # case-insensitive
    listed = [v for _, v in explorer.matches.options if v is not None]
    assert latent in listed
    assert listed == explorer.search_latents(query)
    for f in listed:
        contexts = top_contexts(stats, store, stories.tokenizer, f, window=0)
        tokens = [c.token.lower() for c in contexts]
        assert any(query.lower() in t for t in tokens)
    assert explorer.matches.value is None  # listing does not jump
    explorer.matches.value = latent
    assert explorer.latent.value == latent
    assert any(query.lower() in t.lower() for t in activating_tokens(explorer.contexts_html.value))

    explorer.search.value = "zzqqxx-no-such-token"
    assert [v for _, v in explorer.matches.options] == [None]
    explorer.search.value = ""
    assert explorer.search_latents("  ") == []


def test_search_top_tokens_by_hand():
    """Latent 1 has two top tokens containing "cat", latents 0 and 3 one each (3 has the
    larger max code), latent 4 none; latent 2 never fired (no top tokens)."""
    pieces = [[" cat", " dog"], [" Cat", " cat", " the"], [], [" scat", " a"], [" dog"]]
    max_act_F = torch.tensor([1.0, 0.5, 9.0, 2.0, 3.0])
    assert search_top_tokens(pieces, "  CAT ", max_act_F) == [1, 3, 0]
    assert search_top_tokens(pieces, "o", max_act_F) == [4, 0]  # one each: larger max code first
    assert search_top_tokens(iter(()), " ", max_act_F) == []  # empty query reads nothing
    assert matching_pieces([" Cat", " cat", " Cat", " dog"], "CAT") == [" Cat", " cat"]


def test_highest_share_latent_by_hand():
    """Latent 0 has the largest share but never fires; 1 and 2 tie on share, 2 fires more."""
    count_F = torch.tensor([0, 2, 3, 1])

    def stats(count_F):
        zeros = torch.zeros(len(count_F))
        top = torch.zeros(len(count_F), 1)
        return FeatureStats(10, count_F, count_F / 10, zeros, zeros, top, top.long())

    shares_F = torch.tensor([0.9, 0.5, 0.5, 0.2], dtype=torch.float64)
    assert highest_share_latent(shares_F, stats(count_F)) == 2
    assert highest_share_latent(shares_F, stats(torch.tensor([0, 2, 2, 1]))) == 1  # lower id
    assert highest_share_latent(torch.zeros(4, dtype=torch.float64), stats(count_F)) is None


def test_most_medical_picks_highest_share_then_density(explorer, stories, store):
    stats = explorer.stats
    words = sorted(
        {
            c.token.strip().lower()
            for f in alive(explorer)
            for c in top_contexts(stats, store, stories.tokenizer, f, window=0)
            if len(c.token.strip()) >= 4 and c.token.strip().isalpha()
        }
    )
    assert words, "need a >= 4-letter top token to build a vocabulary"
    vocabulary = set(words[:3])
    shares = {}
    for f in alive(explorer):
        ids = [
            int(store.tokens_CT[store.context_N[r], store.position_N[r]])
            for r in stats.top_index_FK[f].tolist()
            if r >= 0
        ]
        tokens = stories.tokenizer.convert_ids_to_tokens(ids)
        shares[f] = sum(is_medical_piece(t, vocabulary) for t in tokens) / len(tokens)
    expected = max(shares, key=lambda f: (shares[f], float(stats.density_F[f]), -f))
    assert shares[expected] > 0
    try:
        explorer.vocabulary = vocabulary
        torch.testing.assert_close(
            explorer.medical_shares()[alive(explorer)],
            torch.tensor([shares[f] for f in alive(explorer)], dtype=torch.float64),
        )
        explorer.latent.value = next(f for f in alive(explorer) if f != expected)
        explorer.most_medical.click()
        assert explorer.latent.value == expected
        assert "most medical" in explorer.status.value

        explorer.vocabulary = {"zzzzqqqq"}  # nothing qualifies: stay put and say so
        explorer.most_medical.click()
        assert explorer.latent.value == expected
        assert "no alive latent" in explorer.status.value
    finally:
        explorer.vocabulary = None


def test_most_medical_with_the_card_vocabulary(stories):
    """A hand-built store where the answer is known. Each row's activation is a unit vector
    e_j, and the SAE's latent j reads coordinate j, so latent j fires exactly on the rows
    built for it. Of the tokenizer's pieces only "▁with" is medical under the cards'
    vocabulary (a prefix of "withdrawal"): latents 3 and 11 fire on 4 "▁with" rows each,
    latent 7 on 2, latent 5 on 3 "▁with" and 3 "▁cat", latent 9 on 4 "▁the". Shares
    1, 1, 1, 0.5, 0; latents 3 and 11 tie on share and density: the lower id wins."""
    tok = stories.tokenizer
    with_id, cat_id, the_id = tok.convert_tokens_to_ids(["▁with", "▁cat", "▁the"])
    plan = [
        (3, [with_id] * 4),
        (7, [with_id] * 2),
        (11, [with_id] * 4),
        (5, [with_id, cat_id] * 3),
        (9, [the_id] * 4),
    ]
    latents = [j for j, ids in plan for _ in ids]
    n = len(latents)
    acts_ND = torch.zeros(n, 64)
    acts_ND[torch.arange(n), torch.tensor(latents)] = 1.0 + torch.arange(n) / n  # distinct codes
    tokens_CT = torch.tensor([[tok.bos_token_id] + [i for _, ids in plan for i in ids]])
    store = ActivationStore(
        acts_ND,
        torch.zeros(n, dtype=torch.int32),
        torch.arange(1, n + 1, dtype=torch.int32),
        tokens_CT,
        StoreInfo(model="stories260k", hookpoint=HOOK, d_in=64, n_tokens=n),
    )
    sae = identity_relu_sae(16)
    explorer = FeatureExplorer(sae, stories, HOOK, store, latent=9, progress=False)
    assert explorer.stats.count_F.tolist() == [0, 0, 0, 4, 0, 6, 0, 2, 0, 4, 0, 4, 0, 0, 0, 0]
    shares = explorer.medical_shares()  # the card vocabulary: explorer.vocabulary is None
    assert shares[[3, 5, 7, 9, 11]].tolist() == [1.0, 0.5, 1.0, 0.0, 1.0]
    assert explorer.most_medical_latent() == 3
    explorer.most_medical.click()
    assert explorer.latent.value == 3
    assert "most medical: latent 3 (100% of its top tokens)" in explorer.status.value


def test_previous_next_random(explorer):
    start = explorer.latent.value
    explorer.next.click()
    assert explorer.latent.value == (start + 1) % 128
    assert f"#{(start + 1) % 128} of 128" in explorer.header_html.value
    explorer.prev.click()
    explorer.prev.click()
    assert explorer.latent.value == (start - 1) % 128
    picked = set()
    for _ in range(5):
        explorer.random.click()
        picked.add(explorer.latent.value)
    assert picked <= set(alive(explorer)) and len(picked) > 1


def test_search_clears_stale_matches(explorer):
    explorer.search.value = "the"
    assert len(explorer.matches.options) > 1
    match = explorer.matches.options[1][1]
    explorer.matches.value = match
    assert explorer.latent.value == match
    explorer.next.click()  # the picked match no longer describes the view
    assert explorer.matches.value is None
    explorer.search.value = ""  # an emptied box lists nothing and says nothing
    assert [v for _, v in explorer.matches.options] == [None]
    assert explorer.status.value == ""
