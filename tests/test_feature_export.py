"""The offline feature dashboard: one self-contained HTML file holding many latents."""

import re

import pytest
from conftest import HOOK

import saelab
from saelab.features import FeatureIndex
from saelab.widgets import export_feature_dashboard
from saelab.widgets.feature_html import show_piece


@pytest.fixture(scope="module")
def sae():
    sae = saelab.make_sae("topk", 64, 96, k=6, seed=4)
    sae.cfg.hookpoint = HOOK
    return sae


def sections(page):
    """latent id -> the HTML of its section."""
    found = re.findall(r"<section class='fe-latent' id='latent-(\d+)'.*?</section>", page, re.S)
    bodies = re.findall(r"(<section class='fe-latent'.*?</section>)", page, re.S)
    return dict(zip((int(f) for f in found), bodies, strict=True))


def text_of(fragment):
    """What a reader sees of an HTML fragment (tags dropped, entities of show_piece kept)."""
    return re.sub(r"<[^>]+>", "", fragment)


def test_export_holds_every_latent_offline(sae, stories, medical_store, tmp_path):
    index = FeatureIndex(sae, stories, medical_store, window=8, progress=False)
    latents = [int(f) for f in index.alive[:3]] + [int(index.alive[-1])]
    path = export_feature_dashboard(
        sae, stories, medical_store, [*latents, latents[0]], tmp_path / "dash.html", progress=False
    )
    page = path.read_text()
    assert list(tmp_path.iterdir()) == [path]  # atomic: no temporary file left behind
    # nothing is fetched: no script/link/img source and no URL at all
    assert not re.search(r"<(script|link|img)[^>]*(src|href)\s*=", page)
    assert "http://" not in page and "https://" not in page
    assert page.count("<script>") == 1 and "plotly" not in page.lower()
    shown = sections(page)
    assert list(shown) == latents  # each latent once, in the order asked
    picker = re.search(r"<select id='fe-pick'>(.*?)</select>", page, re.S).group(1)
    assert re.findall(r"<option value='(\d+)'>", picker) == [str(f) for f in latents]
    for f in latents:
        body = shown[f]
        view = index.view(f)
        assert f"(#{f} of 96)" in body
        for testid in ("fe-title", "fe-histogram", "fe-top-contexts", "fe-quantiles", "fe-logits"):
            assert f"data-testid='{testid}'" in body
        assert f"density {float(index.stats.density_F[f]):.3%}" in body
        top = view.contexts[0]  # the top context's whole window, as a reader sees it
        window = "".join(show_piece(p) for p in [*top.left, top.token, *top.right])
        assert window in text_of(body)
        for n in view.neighbours:
            assert f"data-latent='{n.latent}'" in body


def test_export_rejects_bad_latents(sae, stories, medical_store, tmp_path):
    with pytest.raises(ValueError, match=r"latents \[96\] out of range: .*0 \.\. 95"):
        export_feature_dashboard(sae, stories, medical_store, [3, 96], tmp_path / "x.html")
    with pytest.raises(ValueError, match="no latents"):
        export_feature_dashboard(sae, stories, medical_store, [], tmp_path / "x.html")
    assert not list(tmp_path.iterdir())
