"""FeatureExplorer on stories260K: the typed prompt shaded by the selected latent, the latents
ranked on a chosen token, and the explorer in a Jupyter kernel."""

import re

import nbformat
import pytest
import torch
from conftest import HOOK
from feature_explorer_helpers import alive
from nbclient import NotebookClient

from saelab.features import latents_on_text, prompt_codes

CAT = "Once upon a time there was a cat"


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
