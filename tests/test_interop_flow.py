"""Feature flow across a stack of SAELens-format SAEs: one SAE per stories260K hookpoint that
flow needs (every layer), of all four kinds SAELens takes, written with
`interop.save_sae_lens`, loaded back with `saelab.load_sae` and filed under the hookpoint the
loader maps each SAELens hook name to; `flow.match` and `flow.flow_graph` on the loaded stack
equal those on the originals."""

import pytest
import torch

import saelab
from saelab import flow, interop
from saelab.models import n_layers

KINDS = ("relu", "topk", "jumprelu", "batchtopk")


def planted_sae(kind: str, hookpoint: str, directions_AD: torch.Tensor, width: int, seed: int):
    """A saelab SAE whose decoder rows are noisy copies of `width` of the shared directions, in
    its own order, at norms away from 1, with random biases: matched rows have cosines near 1
    (a loader that re-ordered, normalised or shifted decoder rows would change the matches)."""
    d = directions_AD.shape[1]
    options = {"k": 4} if kind in ("topk", "batchtopk") else {}
    sae = saelab.make_sae(kind, d, width, seed=seed, hookpoint=hookpoint, **options)
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(directions_AD), generator=g)[:width]
    with torch.no_grad():
        rows_FD = directions_AD[picks] + 0.2 * torch.randn(width, d, generator=g) / d**0.5
        sae.W_dec_FD.copy_(rows_FD * (0.5 + 3 * torch.rand(width, 1, generator=g)))
        sae.b_enc_F.copy_(0.3 * torch.randn(width, generator=g))
        sae.b_dec_D.copy_(0.5 * torch.randn(d, generator=g))
    return sae


@pytest.fixture(scope="module")
def stacks(stories, tmp_path_factory):
    """(the saelab originals, the same SAEs loaded from SAELens folders), hookpoint -> SAE."""
    d = stories.config.hidden_size
    layers = range(1, n_layers(stories))
    directions_AD = torch.nn.functional.normalize(
        torch.randn(48, d, generator=torch.Generator().manual_seed(0)), dim=1
    )
    originals = {
        hook: planted_sae(KINDS[n % len(KINDS)], hook, directions_AD, 24 + 8 * (n % 3), seed=n)
        for n, hook in enumerate(flow.layer_hookpoints(layers))
    }
    root = tmp_path_factory.mktemp("sae_lens_stack")
    folders = [
        interop.save_sae_lens(sae, root / hook.replace(".", "_")) for hook, sae in originals.items()
    ]
    loaded = [saelab.load_sae(folder, model=stories) for folder in folders]
    return originals, {sae.cfg.hookpoint: sae for sae in loaded}


def test_the_loaded_stack_covers_every_flow_hookpoint(stories, stacks):
    originals, loaded = stacks
    # hook names mapped back (blocks.L.hook_mlp_out -> mlp_out.L), in the same order
    assert list(loaded) == list(originals)
    assert {sae.cfg.source["format"] for sae in loaded.values()} == {"sae_lens"}
    assert [sae.cfg.kind for sae in loaded.values()] == [sae.cfg.kind for sae in originals.values()]


def test_flow_match_on_loaded_saes_equals_the_originals(stories, stacks):
    originals, loaded = stacks
    for layer in range(1, n_layers(stories)):
        mine, theirs = flow.match(originals, layer, top_k=3), flow.match(loaded, layer, top_k=3)
        assert theirs.sources == mine.sources and theirs.target == mine.target
        assert torch.equal(theirs.top_index_FPK, mine.top_index_FPK)
        torch.testing.assert_close(theirs.top_score_FPK, mine.top_score_FPK, atol=1e-6, rtol=0)
        assert (mine.score_FP[:, 0] > 0.9).sum() > 5  # planted matches, not near-ties at ~0.2


def test_flow_graph_on_loaded_saes_equals_the_originals(stories, stacks):
    originals, loaded = stacks
    last = n_layers(stories) - 1
    seed = ("resid_post", last, 0)
    mine = flow.flow_graph(originals, seed, res_cut=0.9, module_min=0.9)
    theirs = flow.flow_graph(loaded, seed, res_cut=0.9, module_min=0.9)
    assert mine.number_of_edges() >= 3
    theirs_edges = sorted(theirs.edges(data="cosine"))
    mine_edges = sorted(mine.edges(data="cosine"))
    assert [e[:2] for e in theirs_edges] == [e[:2] for e in mine_edges]
    assert [e[2] for e in theirs_edges] == pytest.approx([e[2] for e in mine_edges])
