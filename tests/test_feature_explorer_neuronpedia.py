"""FeatureExplorer's Neuronpedia link: shown for an SAE with `cfg.neuronpedia_id` (as SAELens
releases carry it), pointing at the shown latent's page; absent without one."""

import re

from conftest import HOOK

import saelab
from saelab.widgets import FeatureExplorer

NEURONPEDIA_ID = "gemma-2-2b/12-gemmascope-res-16k"


def neuronpedia_links(header_html: str) -> list[str]:
    """The href of every `fe-neuronpedia` link in the header."""
    return re.findall(r"<a href='([^']*)'[^>]*data-testid='fe-neuronpedia'", header_html)


def random_sae(neuronpedia_id: str = ""):
    sae = saelab.make_sae("relu", 64, 128, seed=0)
    sae.cfg.hookpoint, sae.cfg.neuronpedia_id = HOOK, neuronpedia_id
    return sae


def test_link_follows_the_shown_latent(stories, medical_store):
    sae = random_sae(NEURONPEDIA_ID)
    explorer = FeatureExplorer(sae, stories, HOOK, medical_store, latent=5, progress=False)
    assert neuronpedia_links(explorer.header_html.value) == [
        "https://www.neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/5"
    ]
    explorer.set_latent(117)
    assert neuronpedia_links(explorer.header_html.value) == [
        "https://www.neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/117"
    ]
    assert "#117" in explorer.header_html.value  # the title moved with it


def test_no_link_without_a_neuronpedia_id(stories, medical_store):
    explorer = FeatureExplorer(random_sae(), stories, HOOK, medical_store, latent=5, progress=False)
    assert "fe-neuronpedia" not in explorer.header_html.value
    assert "neuronpedia.org" not in explorer.header_html.value
