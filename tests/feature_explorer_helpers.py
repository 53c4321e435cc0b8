"""The SAE, explorer and HTML readers that the FeatureExplorer tests share."""

import re

from conftest import HOOK

import saelab
from saelab.widgets import FeatureExplorer


def explorer_sae():
    """A random ReLU SAE over stories260K's width 64 (128 latents), filed under HOOK."""
    sae = saelab.make_sae("relu", 64, 128, seed=0)
    sae.cfg.hookpoint = HOOK
    return sae


def make_explorer(sae, stories, store):
    """The explorer the tests read: top 10 contexts per latent, 4 tokens a side."""
    return FeatureExplorer(sae, stories, HOOK, store, top_k=10, window=4, progress=False)


def alive(explorer):
    return (explorer.stats.count_F > 0).nonzero().squeeze(1).tolist()


def activating_tokens(contexts_html):
    """The text of every highlighted activating token in the contexts view, in order."""
    return re.findall(r"<span class='fe-act'[^>]*>(.*?)</span>", contexts_html)
