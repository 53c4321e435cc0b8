"""FeatureExplorer on stories260K with a random ReLU SAE: views, search, buttons, notebook."""

import re

import ipywidgets as widgets
import nbformat
import pytest
import torch
from conftest import HOOK
from nbclient import NotebookClient

import saelab
from saelab.activations import ActivationStore, StoreInfo
from saelab.data import load_prompts
from saelab.features import (
    FeatureStats,
    highest_share_latent,
    is_medical_piece,
    latent_histogram,
    latents_on_text,
    logit_effects,
    matching_pieces,
    prompt_codes,
    search_top_tokens,
    top_contexts,
)
from saelab.widgets import FeatureExplorer
from saelab.widgets.feature_html import show_piece

CAT = "Once upon a time there was a cat"


@pytest.fixture(scope="module")
def store(medical_store):
    return medical_store


@pytest.fixture(scope="module")
def sae():
    sae = saelab.make_sae("relu", 64, 128, seed=0)
    sae.cfg.hookpoint = HOOK
    return sae


@pytest.fixture(scope="module")
def explorer(sae, stories, store):
    return FeatureExplorer(sae, stories, HOOK, store, top_k=10, window=4, progress=False)


def alive(explorer):
    return (explorer.stats.count_F > 0).nonzero().squeeze(1).tolist()


def activating_tokens(contexts_html):
    """The text of every highlighted activating token in the contexts view, in order."""
    return re.findall(r"<span class='fe-act'[^>]*>(.*?)</span>", contexts_html)


def bar_counts(figure_html):
    """The count of every bar of an SVG histogram, left to right (from each bar's title)."""
    return [int(n) for n in re.findall(r"<rect [^>]*><title>[^<]*: (\d+)</title>", figure_html)]


def descendants(widget):
    """Every widget shown under `widget` (its children, their children, ...)."""
    for child in getattr(widget, "children", ()):
        yield child
        yield from descendants(child)


def test_builds_with_stats_and_an_informative_first_latent(explorer, store):
    shown = list(descendants(explorer))
    views = (
        explorer.latent,
        explorer.prev,
        explorer.next,
        explorer.random,
        explorer.search,
        explorer.matches,
        explorer.most_medical,
        explorer.status,
        explorer.header_html,
        explorer.contexts_html,
        explorer.quantiles_html,
        explorer.histogram,
        explorer.logits_html,
        explorer.neighbours_html,
        explorer.prompt,
        explorer.run_prompt,
        explorer.prompt_position,
        explorer.prompt_html,
        explorer.prompt_rank_html,
    )
    assert all(any(v is w for w in shown) for v in views)  # every view is laid out
    # one <style> block holds the classes; the views carry no inline layout styles
    styles = [w.value for w in shown if isinstance(w, widgets.HTML) and "<style>" in w.value]
    assert len(styles) == 1 and ".fe-act" in styles[0] and ".fe-token" in styles[0]
    assert "monospace" not in explorer.contexts_html.value + explorer.logits_html.value
    # the UI contract's classes on the controls
    contract = {
        "saelab-fe-latent": explorer.latent,
        "saelab-fe-search": explorer.search,
        "saelab-fe-matches": explorer.matches,
        "saelab-fe-prev": explorer.prev,
        "saelab-fe-next": explorer.next,
        "saelab-fe-random": explorer.random,
        "saelab-fe-prompt": explorer.prompt,
        "saelab-fe-run-prompt": explorer.run_prompt,
    }
    assert all(css in w._dom_classes for css, w in contract.items())
    assert explorer.stats.n_tokens == len(store)
    assert explorer.stats.top_index_FK.shape == (128, 10)
    # opens on an informative latent, not latent 0: a random ReLU SAE has no latent under
    # 1% density (the rule's first choice, tested by hand in test_features), so the least
    # dense alive one
    count_F = explorer.stats.count_F
    assert not [f for f in alive(explorer) if float(explorer.stats.density_F[f]) < 0.01]
    first = min(alive(explorer), key=lambda f: (int(count_F[f]), f))
    assert first != 0 and int(count_F[first]) < int(count_F[0])
    assert explorer.latent.value == first
    assert f"latent {first}" in explorer.header_html.value
    assert f"#{first} of 128" in explorer.header_html.value
    assert "promoted" in explorer.logits_html.value and "suppressed" in explorer.logits_html.value
    assert explorer.prompt.value == load_prompts("medical")[0]["text"]


def test_latent_change_updates_every_view(explorer, sae, stories, store):
    latent = alive(explorer)[-1]
    assert latent != explorer.latent.value
    explorer.latent.value = latent
    stats = explorer.stats

    header = explorer.header_html.value
    assert f"latent {latent}" in header
    assert f"{float(stats.density_F[latent]):.4g}" in header
    assert f"{int(stats.count_F[latent])} of {len(store)} tokens" in header
    assert f"{float(stats.max_act_F[latent]):.3g}" in header

    expected = top_contexts(stats, store, stories.tokenizer, latent, window=4, sae=sae)
    assert expected  # an alive latent has contexts
    html_ = explorer.contexts_html.value
    # the stats' top 10 rows in order; the explorer may list more when some windows repeat
    assert activating_tokens(html_)[: len(expected)] == [show_piece(c.token) for c in expected]
    assert [c.value for c in explorer.contexts[: len(expected)]] == [c.value for c in expected]
    for c in expected:  # every neighbour is shown too, highlighted by its code
        for piece in (*c.left, *c.right):
            assert f">{show_piece(piece)}</span>" in html_
        strongest = max(a for a in c.window_acts if a is not None)
        assert f"title='{strongest:.4g}'" in html_
    assert "rgba(255,140,0,1.000)" in html_  # the strongest context is fully highlighted

    hist = latent_histogram(sae, store, latent, n_bins=30)  # the plain store scan
    figure = explorer.histogram.value
    assert bar_counts(figure) == hist.counts_B.tolist()
    assert f"density {float(stats.density_F[latent]):.3%}" in figure  # in the figure's title
    assert "data-testid='fe-histogram'" in figure and "viewBox" in figure  # scales to its column
    assert "width=" not in figure.split("<svg", 1)[1].split(">", 1)[0]  # no fixed pixel width

    # another latent: everything moves on
    other = alive(explorer)[0]
    explorer.latent.value = other
    expected = top_contexts(stats, store, stories.tokenizer, other, window=4)
    shown = activating_tokens(explorer.contexts_html.value)
    assert shown[: len(expected)] == [show_piece(c.token) for c in expected]
    hist = latent_histogram(sae, store, other)
    assert bar_counts(explorer.histogram.value) == hist.counts_B.tolist()


def test_labels_hook_used_in_headers(explorer):
    latent = explorer.latent.value
    assert explorer.latent_label(latent) == f"latent {latent}"
    try:
        explorer.labels = {latent: "<cat> detector"}
        explorer.refresh()
        assert "&lt;cat&gt; detector" in explorer.header_html.value
        explorer.labels = lambda f: f"feature #{f}"
        assert explorer.latent_label(3) == "feature #3"
    finally:
        explorer.labels = None
        explorer.refresh()


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
    sae = saelab.make_sae("relu", 64, 16, seed=0)
    with torch.no_grad():
        sae.W_enc_DF.zero_()
        sae.W_enc_DF[torch.arange(16), torch.arange(16)] = 1.0
        sae.b_enc_F.zero_()
        sae.b_dec_D.zero_()
    explorer = FeatureExplorer(sae, stories, HOOK, store, latent=9, progress=False)
    assert explorer.stats.count_F.tolist() == [0, 0, 0, 4, 0, 6, 0, 2, 0, 4, 0, 4, 0, 0, 0, 0]
    shares = explorer.medical_shares()  # the card vocabulary: explorer.vocabulary is None
    assert shares[[3, 5, 7, 9, 11]].tolist() == [1.0, 0.5, 1.0, 0.0, 1.0]
    assert explorer.most_medical_latent() == 3
    explorer.most_medical.click()
    assert explorer.latent.value == 3
    assert "most medical: latent 3 (100% of its top tokens)" in explorer.status.value


def test_prompt_is_shaded_by_the_selected_latent(explorer, sae, stories):
    codes = prompt_codes(sae, stories, HOOK, CAT)
    returned = explorer.show_prompt(CAT)
    assert returned == explorer.prompt_tokens == latents_on_text(sae, stories, HOOK, CAT, top_k=10)
    assert torch.equal(explorer.prompt_codes.codes_TF, codes.codes_TF)
    for latent in (explorer.latent.value, alive(explorer)[-1]):
        explorer.latent.value = latent
        page = explorer.prompt_html.value
        assert "data-testid='fe-prompt-tokens'" in page
        spans = re.findall(r"<span class='fe-ptok'[^>]*>", page)
        assert len(spans) == len(codes.tokens)
        acts = codes.codes_TF[:, latent]
        for t, span in enumerate(spans):  # each token's code of THIS latent on hover
            assert f"title='#{t}: {float(acts[t]):.4g}" in span
        kept = acts[codes.kept_T]
        if float(kept.max()) > 0:  # its strongest kept token is the fully shaded one
            best = int(torch.where(codes.kept_T, acts, -1.0).argmax())
            full = [i for i, sp in enumerate(spans) if "rgba(255,140,0,1.000)" in sp]
            assert full == [best]
        silent = [t for t in range(len(spans)) if float(acts[t]) == 0]
        assert all("background-color" not in spans[t] for t in silent)


def test_prompt_rank_lists_latents_on_the_chosen_token(explorer, sae, stories):
    explorer.prompt.value = "There was a dog"
    explorer.run_prompt.click()
    codes = prompt_codes(sae, stories, HOOK, "There was a dog")
    # opens on the token with the strongest code of any latent
    strongest = int(codes.codes_TF.masked_fill(~codes.kept_T[:, None], -1).max(1).values.argmax())
    assert explorer.prompt_position.value == strongest
    for position in (strongest, 0):
        explorer.prompt_position.value = position
        page = explorer.prompt_rank_html.value
        assert "data-testid='fe-prompt-rank'" in page
        by_hand = sorted(
            (f for f in range(128) if codes.codes_TF[position, f] != 0),
            key=lambda f: (-float(codes.codes_TF[position, f]), f),
        )[:10]
        assert [int(f) for f in re.findall(r"data-latent='(\d+)'", page)] == by_hand
        assert f"data-position='{position}' data-chosen" in explorer.prompt_html.value


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


def test_nearest_features_are_the_decoder_cosine_argmax(explorer, sae):
    latent = explorer.latent.value
    W = sae.W_dec_FD.detach().double()
    cos = (W / W.norm(dim=1, keepdim=True)) @ (W[latent] / W[latent].norm())
    cos[latent] = float("-inf")
    page = explorer.neighbours_html.value
    assert "data-testid='fe-neighbours'" in page
    listed = [int(f) for f in re.findall(r"data-latent='(\d+)'", page)]
    assert listed == cos.topk(5).indices.tolist()
    assert listed[0] == int(cos.argmax())


def test_quantile_bins_are_ordered_and_cover_the_firings(explorer):
    latent = max(alive(explorer), key=lambda f: int(explorer.stats.count_F[f]))
    explorer.latent.value = latent
    bins = [q.bin for q in explorer.view.quantiles]
    assert len(bins) == 10
    assert sum(b.count for b in bins) == int(explorer.stats.count_F[latent])
    for stronger, weaker in zip(bins, bins[1:], strict=False):
        assert stronger.lo >= weaker.hi
    page = explorer.quantiles_html.value
    assert "data-testid='fe-quantiles'" in page
    heads = re.findall(r"quantile (\d+)/10", page)
    assert heads == [str(i) for i in range(10, 0, -1)]
    for q in explorer.view.quantiles:  # every sampled context is shown with its code
        for c in q.contexts:
            assert f"title='{c.value:.4g}'" in page


def test_validation_errors(explorer, stories, store):
    with pytest.raises(ValueError, match=r"d_in=32.*store's d_in is 64"):
        FeatureExplorer(saelab.make_sae("relu", 32, 128, seed=0), stories, HOOK, store)
    wrong = saelab.make_sae("relu", 64, 128, seed=0)
    wrong.cfg.hookpoint = "resid_post.1"
    with pytest.raises(ValueError, match="resid_post.1"):
        FeatureExplorer(wrong, stories, HOOK, store)
    with pytest.raises(ValueError, match="store was harvested at 'resid_post.2'"):
        FeatureExplorer(saelab.make_sae("relu", 64, 128, seed=0), stories, "resid_post.1", store)
    with pytest.raises(ValueError, match="out of range"):
        FeatureExplorer(
            saelab.make_sae("relu", 64, 128, seed=0),
            stories,
            HOOK,
            store,
            latent=128,
            progress=False,
        )
    with pytest.raises(ValueError, match=r"out of range.*0 \.\. 127"):
        explorer.set_latent(-1)
    before = explorer.latent.value
    explorer.latent.value = 1000  # a visible error, the view stays
    assert explorer.latent.value == before
    assert "data-testid='fe-error'" in explorer.status.value
    assert "latent 1000 out of range: this SAE has latents 0 .. 127" in explorer.status.value
    assert f"latent {before}" in explorer.header_html.value
    explorer.latent.value = 127 if before != 127 else 126  # a valid id clears the error
    assert "fe-error" not in explorer.status.value
    assert f"#{explorer.latent.value} of 128" in explorer.header_html.value


@pytest.mark.slow  # a Jupyter kernel: ~15 s
def test_renders_in_notebook(tmp_path):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "import saelab\nfrom saelab.widgets import FeatureExplorer\n"
                "model = saelab.load_model('stories260k', device='cpu')\n"
                "texts = saelab.load_corpus('medical', split='train', max_texts=60)\n"
                "store = saelab.harvest(model, 'resid_post.2', texts, max_tokens=1024,\n"
                "                       ctx_len=64, progress=False)\n"
                "sae = saelab.make_sae('relu', 64, 128, seed=0)"
            ),
            nbformat.v4.new_code_cell(
                "ex = FeatureExplorer(sae, model, 'resid_post.2', store)\nex"
            ),
            nbformat.v4.new_code_cell(
                "ex.latent.value = 5\nassert 'latent 5' in ex.header_html.value\n"
                "ex.run_prompt.click()\n"
                "shown = ex.prompt_html.value.count(\"class='fe-ptok'\")\n"
                "assert shown == len(ex.prompt_tokens) > 0"
            ),
        ]
    )
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


def test_residual_sae_latents_are_labelled_by_block(sae, stories, store):
    residual = saelab.make_sae("topk", 64, 32, seed=1, k=4, decoder_bias=False)
    combined = saelab.ResidualSAE(sae, [residual], ["medical"])
    explorer = FeatureExplorer(combined, stories, HOOK, store, top_k=5, window=2, progress=False)
    assert explorer.n_latents == 128 + 32
    assert explorer.latent_label(3) == "base latent 3 (#3)"
    assert explorer.latent_label(130) == "medical latent 2 (#130)"
    residual_alive = [i for i in alive(explorer) if i >= 128]
    assert residual_alive, "a random TopK residual fires on something"
    explorer.latent.value = residual_alive[0]
    assert f"medical latent {residual_alive[0] - 128}" in explorer.header_html.value
    # The residual block's statistics are those of the residual SAE run on the base's error.
    x = store.get(torch.arange(len(store)))
    with torch.no_grad():
        f_res = residual.encode(x - sae(x).x_hat)
    assert explorer.stats.count_F[128:].tolist() == (f_res > 0).sum(0).tolist()


def test_hierarchical_topk_at_a_chosen_k(stories, store):
    """A HierarchicalTopK SAE served at k=2: the statistics are those of its top-2 codes
    (each token fires exactly 2 latents), logits and neighbours use its decoder."""
    sae = saelab.make_sae("hierarchical_topk", 64, 96, k=8, seed=2)
    explorer = FeatureExplorer(sae, stories, HOOK, store, k=2, top_k=5, progress=False)
    x = store.get(torch.arange(len(store)))
    with torch.no_grad():
        f_k2 = sae.encode(x, 2)
    assert explorer.stats.count_F.tolist() == (f_k2 != 0).sum(0).tolist()
    assert int(explorer.stats.count_F.sum()) == 2 * len(store)
    latent = explorer.latent.value
    assert explorer.view.effects.promoted == logit_effects(sae, stories, latent, 5).promoted
    assert f"#{latent} of 96" in explorer.header_html.value
