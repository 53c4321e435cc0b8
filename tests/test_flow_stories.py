"""saelab.flow on stories260K: the residual identity the exact split relies on, the groups
and split against brute force, non-affine encoders, labels on graph nodes."""

import pytest
import torch

import saelab
from saelab import flow
from saelab.data import token_str
from saelab.models import final_norm_weight, hf_module
from saelab.sae import fires

STORIES_HOOKS = ["resid_post.1", "resid_post.2", "mlp_out.2", "attn_out.2"]
GROUP_OF = {  # (res fires, mlp fires, att fires) -> label, written out by hand
    (1, 0, 0): "From RES",
    (0, 1, 0): "From MLP",
    (0, 0, 1): "From ATT",
    (1, 1, 0): "RES & MLP",
    (1, 0, 1): "RES & ATT",
    (0, 1, 1): "MLP & ATT",
    (1, 1, 1): "RES & MLP & ATT",
    (0, 0, 0): "From nowhere",
}


# --- stories260K: the identity the exact check relies on --------------------------------------
@pytest.fixture(scope="module")
def stories_stores(stories, medical_texts):
    return saelab.harvest(
        stories, STORIES_HOOKS, medical_texts, max_tokens=2048, ctx_len=64, progress=False
    )


def stories_saes(target_kind="topk", dense_encoder=True, **target_options):
    """Random width-128 SAEs, the target with random biases (so pre_acts(0) != 0; b_enc only
    with a dense encoder: a KronSAE has none)."""
    saes = {
        h: saelab.make_sae("topk", 64, 128, seed=n, k=4, hookpoint=h)
        for n, h in enumerate(STORIES_HOOKS)
    }
    target = saelab.make_sae(
        target_kind, 64, 128, seed=7, hookpoint="resid_post.2", **target_options
    )
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        target.b_dec_D.copy_(0.3 * torch.randn(64, generator=g))
        if dense_encoder:
            target.b_enc_F.copy_(0.1 * torch.randn(128, generator=g))
    saes["resid_post.2"] = target
    return saes


def test_stories_resid_post_is_the_sum_of_its_parts(stories_stores):
    r1, r2, mlp, att = (stories_stores[h].acts_ND for h in STORIES_HOOKS)
    assert len(r2) > 1500
    torch.testing.assert_close(r2, r1 + att + mlp, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind, options", [("topk", {"k": 4}), ("jumprelu", {})])
def test_stories_groups_and_exact_split_against_brute_force(stories_stores, kind, options):
    saes = stories_saes(kind, **options)
    groups = flow.predecessor_groups(saes, 2, stories_stores, batch_size=500)
    m = flow.match(saes, 2, top_k=1)
    x = {h: stories_stores[h].acts_ND for h in STORIES_HOOKS}
    fired_NF = fires(saes["resid_post.2"].encode(x["resid_post.2"]))
    on = [fires(saes[h].encode(x[h]))[:, m.index_FP[:, p]] for p, h in enumerate(m.sources)]
    expected_FG = torch.zeros_like(groups.counts_FG)
    for bits, label in GROUP_OF.items():
        in_group = fired_NF.clone()
        for p in range(3):
            in_group &= on[p] == bool(bits[p])
        expected_FG[:, flow.GROUPS.index(label)] = in_group.sum(0)
    assert groups.n_pairs == int(fired_NF.sum()) > 1000
    assert torch.equal(groups.counts_FG, expected_FG)
    assert groups.max_split_error < 1e-4
    # The largest part by hand: x_P . W_enc[:, i] for each source (the encoder's linear map).
    rows, feats = fired_NF.nonzero(as_tuple=True)
    W_enc = saes["resid_post.2"].W_enc_DF.detach()
    parts = torch.stack([(x[h] @ W_enc)[rows, feats] for h in m.sources], 1)
    bits_M = torch.stack([on[p][rows, feats] for p in range(3)], 1)
    largest_in_S = bits_M.gather(1, parts.argmax(1, keepdim=True)).squeeze(1)
    has_S = bits_M.any(1)
    assert groups.exact_agreement == pytest.approx(
        float(largest_in_S[has_S].double().mean()), abs=1e-12
    )


def test_exact_split_refuses_a_non_affine_encoder(stories_stores):
    saes = stories_saes("kron", dense_encoder=False, k=4)
    with pytest.raises(ValueError, match="affine"):
        flow.predecessor_groups(saes, 2, stories_stores)
    groups = flow.predecessor_groups(saes, 2, stories_stores, exact=False)
    assert groups.exact_agreement is None and groups.max_split_error is None
    assert groups.n_pairs == int(
        fires(saes["resid_post.2"].encode(stories_stores["resid_post.2"].acts_ND)).sum()
    )


def test_attach_labels_puts_top_tokens_and_logit_effects_on_nodes(stories, stories_stores):
    saes = stories_saes()
    target = saes["resid_post.2"]
    seed = int(fires(target.encode(stories_stores["resid_post.2"].acts_ND)).sum(0).argmax())
    graph = flow.flow_graph(saes, ("resid_post", 2, seed), res_cut=0.0, module_min=0.0)
    assert {n[:2] for n in graph} == {
        ("resid_post", 2),
        ("resid_post", 1),
        ("mlp_out", 2),
        ("attn_out", 2),
    }
    flow.attach_labels(graph, saes, stories, stories_stores, top_k=3)
    W_U = hf_module(stories).get_output_embeddings().weight.detach().float()
    gain = final_norm_weight(stories).detach().float()
    for _node, attrs in graph.nodes(data=True):
        sae, store = saes[attrs["hookpoint"]], stories_stores[attrs["hookpoint"]]
        codes = sae.encode(store.acts_ND)[:, attrs["feature"]].detach()
        assert len(attrs["top_tokens"]) == min(3, int((codes != 0).sum()))
        if codes.max() > 0:
            row = int(codes.argmax())
            token = store.tokens_CT[store.context_N[row], store.position_N[row]]
            assert attrs["top_tokens"][0] == token_str(stories.tokenizer, int(token))
            assert attrs["top_values"][0] == pytest.approx(float(codes.max()), rel=1e-5)
        best = int((W_U @ (gain * sae.W_dec_FD[attrs["feature"]].detach())).argmax())
        assert attrs["promoted"][0] == token_str(stories.tokenizer, best)
        assert len(attrs["promoted"]) == len(attrs["suppressed"]) == 3
    assert graph.nodes[("resid_post", 2, seed)]["density"] == pytest.approx(
        float((target.encode(stories_stores["resid_post.2"].acts_ND) != 0).float().mean(0)[seed])
    )
