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
    matching_pieces,
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
    return FeatureExplorer(sae, stories, HOOK, store, top_k=10, window=4)


def alive(explorer):
    return (explorer.stats.count_F > 0).nonzero().squeeze(1).tolist()


def activating_tokens(contexts_html):
    """The text of every highlighted activating token in the contexts view, in order."""
    return re.findall(r"<span class='fe-act'[^>]*>(.*?)</span>", contexts_html)


def descendants(widget):
    """Every widget shown under `widget` (its children, their children, ...)."""
    for child in getattr(widget, "children", ()):
        yield child
        yield from descendants(child)


def test_builds_with_stats_and_first_alive_latent(explorer, store):
    shown = list(descendants(explorer))
    views = (
        explorer.latent,
        explorer.search,
        explorer.matches,
        explorer.most_medical,
        explorer.status,
        explorer.header_html,
        explorer.contexts_html,
        explorer.histogram,
        explorer.logits_html,
        explorer.prompt,
        explorer.run_prompt,
        explorer.prompt_html,
    )
    assert all(any(v is w for w in shown) for v in views)  # every view is laid out
    # one <style> block holds the classes; the views carry no inline layout styles
    styles = [w.value for w in shown if isinstance(w, widgets.HTML) and "<style>" in w.value]
    assert len(styles) == 1 and ".fe-act" in styles[0] and ".fe-token" in styles[0]
    assert "monospace" not in explorer.contexts_html.value + explorer.logits_html.value
    assert explorer.stats.n_tokens == len(store)
    assert explorer.stats.top_index_FK.shape == (128, 10)
    first = alive(explorer)[0]
    assert explorer.latent.value == first
    assert (explorer.latent.min, explorer.latent.max) == (0, 127)
    assert f"latent {first}" in explorer.header_html.value
    assert len(explorer.histogram.data) == 1
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
    assert activating_tokens(html_) == [show_piece(c.token) for c in expected]
    for c in expected:  # every neighbour is shown too, highlighted by its code
        for piece in (*c.left, *c.right):
            assert f">{show_piece(piece)}</span>" in html_
        strongest = max(a for a in c.window_acts if a is not None)
        assert f"title='{strongest:.4g}'" in html_
    assert "rgba(255,140,0,1.000)" in html_  # the strongest context is fully highlighted

    hist = latent_histogram(sae, store, latent, n_bins=30)
    bar = explorer.histogram.data[0]
    assert list(bar.y) == hist.counts_B.tolist()
    assert sum(bar.y) == int(stats.count_F[latent])
    centres = ((hist.edges_B1[1:] + hist.edges_B1[:-1]) / 2).tolist()
    assert list(bar.x) == pytest.approx(centres, rel=1e-5)
    assert str(latent) in explorer.histogram.layout.title.text

    # another latent: everything moves on
    other = alive(explorer)[0]
    explorer.latent.value = other
    expected = top_contexts(stats, store, stories.tokenizer, other, window=4)
    shown = activating_tokens(explorer.contexts_html.value)
    assert shown == [show_piece(c.token) for c in expected]
    hist = latent_histogram(sae, store, other)
    assert list(explorer.histogram.data[0].y) == hist.counts_B.tolist()


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
    explorer = FeatureExplorer(sae, stories, HOOK, store, latent=9)
    assert explorer.stats.count_F.tolist() == [0, 0, 0, 4, 0, 6, 0, 2, 0, 4, 0, 4, 0, 0, 0, 0]
    shares = explorer.medical_shares()  # the card vocabulary: explorer.vocabulary is None
    assert shares[[3, 5, 7, 9, 11]].tolist() == [1.0, 0.5, 1.0, 0.0, 1.0]
    assert explorer.most_medical_latent() == 3
    explorer.most_medical.click()
    assert explorer.latent.value == 3
    assert "most medical: latent 3 (100% of its top tokens)" in explorer.status.value


def test_show_prompt_one_span_per_token(explorer, sae, stories):
    expected = latents_on_text(sae, stories, HOOK, CAT, top_k=5)
    returned = explorer.show_prompt(CAT)
    assert returned == expected == explorer.prompt_tokens
    page = explorer.prompt_html.value
    spans = re.findall(r"<span class='fe-token'.*?</small></span>", page)
    assert len(spans) == len(expected) == page.count("class='fe-token'")
    for span, tok in zip(spans, expected, strict=True):
        assert f"<code>{show_piece(tok.token)}</code>" in span
        listing = re.search(r"<small class='fe-latents'>(.*?)</small>", span).group(1)
        ids = [int(item.split(":")[0]) for item in listing.split("<br>") if item != "—"]
        assert ids == [f for f, _ in tok.latents]
    assert "rgba(255,140,0,1.000)" in page  # the strongest token is fully highlighted

    explorer.prompt.value = "There was a dog"
    explorer.run_prompt.click()
    assert explorer.prompt_tokens == latents_on_text(sae, stories, HOOK, "There was a dog", top_k=5)
    assert explorer.prompt_html.value.count("class='fe-token'") == len(explorer.prompt_tokens)


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
        FeatureExplorer(saelab.make_sae("relu", 64, 128, seed=0), stories, HOOK, store, latent=128)
    with pytest.raises(ValueError, match=r"out of range.*0 \.\. 127"):
        explorer.set_latent(-1)
    explorer.latent.value = 1000  # the box clamps
    assert explorer.latent.value == 127
    assert "latent 127" in explorer.header_html.value


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
                "shown = ex.prompt_html.value.count(\"class='fe-token'\")\n"
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
    explorer = FeatureExplorer(combined, stories, HOOK, store, top_k=5, window=2)
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
