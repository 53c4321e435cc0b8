"""saelab.flow against brute force and planted structure: matching, predecessor groups, the
exact three-part split, Mann-Whitney U, and flow graphs (synthetic SAEs and stories260K)."""

import math

import pytest
import torch

import saelab
from saelab import flow
from saelab.activations import ActivationStore
from saelab.data import token_str
from saelab.models import final_norm_weight, hf_module
from saelab.sae import fires

D, W = 256, 24  # 10 planted SAEs x 24 rows = 240 orthonormal directions fit in 256 dims
NOISE = 1e-3  # breaks exact ties; far below every threshold used (0.15, 0.5)
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


def unit(v):
    return v / v.norm()


def relu_sae(hookpoint, W_dec_FD):
    """A ReLU SAE with encoder = decoder^T and b_enc = -0.5: latent j fires iff <x, d_j> > 0.5."""
    sae = saelab.make_sae("relu", D, W, hookpoint=hookpoint)
    with torch.no_grad():
        sae.W_dec_FD.copy_(W_dec_FD)
        sae.W_enc_DF.copy_(W_dec_FD.T)
        sae.b_enc_F.fill_(-0.5)
    return sae


@pytest.fixture(scope="module")
def planted():
    return planted_saes()


def planted_saes():
    """SAEs at layers 0..3 whose decoders are orthonormal rows, except the planted chain:
    r1[7] = r0[4] + 0.5 a1[0]; r2[3] = r1[7] + 0.3 m2[6]; r2[5] = m2[2]; r2[9] = r1[1] + a2[4];
    r3[0] = r2[3]; r3[8] = r2[3] + 1.5 m3[5]; r3[11] = r2[3] + 2 a3[1] (all normalised)."""
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0].T
    hooks = [f"resid_post.{L}" for L in range(4)]
    hooks += [f"{site}.{L}" for site in ("mlp_out", "attn_out") for L in (1, 2, 3)]
    rows = {h: basis[k * W : (k + 1) * W].clone() for k, h in enumerate(hooks)}
    r0, r1, r2, r3 = (rows[f"resid_post.{L}"] for L in range(4))
    m2, m3, a1, a2, a3 = (
        rows[h] for h in ("mlp_out.2", "mlp_out.3", "attn_out.1", "attn_out.2", "attn_out.3")
    )
    r1[7] = unit(r0[4] + 0.5 * a1[0])
    r2[3] = unit(r1[7] + 0.3 * m2[6])
    r2[5] = m2[2]
    r2[9] = unit(r1[1] + a2[4])
    r3[0] = r2[3]
    r3[8] = unit(r2[3] + 1.5 * m3[5])
    r3[11] = unit(r2[3] + 2.0 * a3[1])
    for h in hooks:
        rows[h] = rows[h] + NOISE * torch.randn(W, D, generator=g, dtype=torch.float64)
        rows[h] = (rows[h] / rows[h].norm(dim=1, keepdim=True)).float()
    return {h: relu_sae(h, rows[h]) for h in hooks}


def planted_stores(saes):
    """Aligned layer-2 stores with tokens of known groups; resid_post.2 = res + mlp + att."""
    r1, m2, a2 = (saes[h].W_dec_FD.detach() for h in ("resid_post.1", "mlp_out.2", "attn_out.2"))
    zero = torch.zeros(D)
    kinds = [  # (res, mlp, att, repeats); the target feature that fires and its group
        (r1[7], zero, zero, 3),  # f3, From RES
        (zero, m2[2], zero, 5),  # f5, From MLP
        (r1[1], zero, a2[4], 2),  # f9, RES & ATT
        (r1[7], m2[6], zero, 4),  # f3, RES & MLP
        (0.45 * r1[7], 0.45 * m2[6], zero, 1),  # f3 fires (0.56 > 0.5), no source does: nowhere
        (zero, zero, zero, 2),  # nothing fires
    ]
    parts = [torch.stack([k[p] for k in kinds for _ in range(k[3])]) for p in range(3)]
    order = torch.randperm(len(parts[0]), generator=torch.Generator().manual_seed(1))
    res, mlp, att = (x[order] for x in parts)
    acts = {
        "resid_post.1": res,
        "mlp_out.2": mlp,
        "attn_out.2": att,
        "resid_post.2": res + mlp + att,
    }
    return {h: ActivationStore.from_tensor(x, hookpoint=h) for h, x in acts.items()}


def random_flow_saes(widths, d=16, kind="topk", seed=0, **options):
    saes = {}
    for n, (hook, width) in enumerate(widths.items()):
        sae = saelab.make_sae(kind, d, width, seed=seed + n, hookpoint=hook, **options)
        with torch.no_grad():  # non-unit rows: match must normalise (saved SAEs have 1/s norms)
            g = torch.Generator().manual_seed(100 + n)
            sae.W_dec_FD *= 0.5 + 3 * torch.rand(width, 1, generator=g)
        saes[hook] = sae
    return saes


# --- matching --------------------------------------------------------------------------------
def test_match_equals_float64_brute_force_top1_and_top5():
    widths = {"resid_post.4": 40, "resid_post.3": 50, "mlp_out.4": 30, "attn_out.4": 60}
    saes = random_flow_saes(widths)
    m = flow.match(saes, layer=4, top_k=5, chunk=7)
    assert m.sources == ("resid_post.3", "mlp_out.4", "attn_out.4") and m.target == "resid_post.4"
    T = saes["resid_post.4"].W_dec_FD.detach().double()
    T = T / T.norm(dim=1, keepdim=True)
    for p, hook in enumerate(m.sources):
        S = saes[hook].W_dec_FD.detach().double()
        cos = T @ (S / S.norm(dim=1, keepdim=True)).T
        top = cos.topk(5, dim=1)
        assert torch.equal(m.top_index_FPK[:, p], top.indices)
        torch.testing.assert_close(m.top_score_FPK[:, p].double(), top.values, atol=1e-6, rtol=0)
        assert torch.equal(m.index_FP[:, p], cos.argmax(1))
        torch.testing.assert_close(m.score_FP[:, p].double(), cos.max(1).values, atol=1e-6, rtol=0)


def test_match_names_what_is_missing():
    saes = random_flow_saes({"resid_post.2": 8, "resid_post.1": 8, "attn_out.2": 8})
    with pytest.raises(ValueError, match="missing: mlp_out.2"):
        flow.match(saes, layer=2)
    with pytest.raises(ValueError, match="resid_post.-1"):
        flow.match(saes, layer=0)
    saes["mlp_out.2"] = saes["attn_out.2"]  # filed under the wrong hookpoint
    with pytest.raises(ValueError, match="trained on attn_out.2"):
        flow.match(saes, layer=2)
    assert flow.flow_hookpoints(12) == (
        "resid_post.12",
        ("resid_post.11", "mlp_out.12", "attn_out.12"),
    )


def test_match_recovers_the_planted_predecessors(planted):
    m = flow.match(planted, layer=2)
    assert m.index_FP[3, :2].tolist() == [7, 6]
    assert m.index_FP[5, 1] == 2 and m.index_FP[9, 0] == 1 and m.index_FP[9, 2] == 4
    expected = {(3, 0): 1 / math.sqrt(1.09), (3, 1): 0.3 / math.sqrt(1.09), (5, 1): 1.0}
    expected |= {(9, 0): 1 / math.sqrt(2), (9, 2): 1 / math.sqrt(2)}
    for (i, p), cosine in expected.items():
        assert m.score_FP[i, p] == pytest.approx(cosine, abs=0.01)
    assert m.score_FP[3, 2].abs() < 0.05  # f3 has no attention component
    assert m.top_index_FPK[3, 0, 0] == 7 and m.top_score_FPK[3, 0, 1] < 0.05


# --- predecessor groups on planted codes -----------------------------------------------------
def test_predecessor_groups_assign_the_planted_groups(planted):
    stores = planted_stores(planted)
    groups = flow.predecessor_groups(planted, 2, stores, batch_size=4)
    counts = dict(zip(groups.groups, groups.counts_G.tolist(), strict=True))
    assert counts == {
        "From RES": 3, "From MLP": 5, "From ATT": 0, "RES & MLP": 4, "RES & ATT": 2,
        "MLP & ATT": 0, "RES & MLP & ATT": 0, "From nowhere": 1,
    }  # fmt: skip
    assert groups.n_pairs == 15 and groups.n_tokens == 17
    G = {name: k for k, name in enumerate(flow.GROUPS)}
    assert groups.counts_FG[3, [G["From RES"], G["RES & MLP"], G["From nowhere"]]].tolist() == [
        3,
        4,
        1,
    ]
    assert groups.counts_FG[5, G["From MLP"]] == 5 and groups.counts_FG[9, G["RES & ATT"]] == 2
    assert groups.counts_FG.sum() == 15
    # Exact split: the target's linear part is x . d_i; the largest part is always in S.
    assert groups.max_split_error < 1e-5
    assert groups.exact_agreement == 1.0
    largest = groups.largest_GP
    assert largest[G["From RES"]].tolist() == [3, 0, 0] and largest[G["From MLP"]].tolist() == [
        0,
        5,
        0,
    ]
    assert largest[G["RES & MLP"]].tolist() == [4, 0, 0] and largest[
        G["From nowhere"]
    ].tolist() == [1, 0, 0]
    assert largest[G["RES & ATT"], 1] == 0 and largest[G["RES & ATT"]].sum() == 2


def test_shuffled_decoder_null_sends_the_planted_pairs_to_nowhere(planted):
    stores = planted_stores(planted)
    real = flow.predecessor_groups(planted, 2, stores)
    assert real.counts_G[flow.GROUPS.index("From nowhere")] == 1
    nulls = [flow.predecessor_groups(planted, 2, stores, null=True, seed=s) for s in range(5)]
    assert all(null.null and null.n_pairs == 15 for null in nulls)
    nowhere = sum(int(null.counts_G[flow.GROUPS.index("From nowhere")]) for null in nulls)
    assert nowhere >= 0.8 * 5 * 15  # a random row rarely fires where the planted one does
    null = nulls[3]
    for p in range(3):  # each source's indices went through one permutation
        pairs = set(zip(real.index_FP[:, p].tolist(), null.index_FP[:, p].tolist(), strict=True))
        assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})
    assert (null.index_FP != real.index_FP).float().mean() > 0.8


def test_predecessor_groups_check_the_stores(planted):
    stores = planted_stores(planted)
    short = dict(stores, **{"mlp_out.2": ActivationStore.from_tensor(torch.zeros(5, D))})
    with pytest.raises(ValueError, match="resid_post.2 and mlp_out.2 are not aligned"):
        flow.predecessor_groups(planted, 2, short)
    del stores["attn_out.2"]
    with pytest.raises(ValueError, match="missing: attn_out.2"):
        flow.predecessor_groups(planted, 2, stores)


# --- Mann-Whitney U ----------------------------------------------------------------------------
def test_mann_whitney_u_equals_the_pair_count_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 12, (57,), generator=g).float()
    b = torch.randint(3, 15, (41,), generator=g).float()
    U, p = flow.mann_whitney(a, b)
    brute = (a[:, None] > b[None]).double().sum() + 0.5 * (a[:, None] == b[None]).double().sum()
    assert U == pytest.approx(float(brute), abs=1e-9)
    U_ba, p_ba = flow.mann_whitney(b, a)
    assert U_ba == pytest.approx(57 * 41 - float(brute), abs=1e-9) and p_ba == pytest.approx(p)


def test_mann_whitney_p_value_by_hand():
    # a = 1,2,2,3 and b = 2,4,5: ranks 1, 3, 3, 5 (ties at 2 share ranks 2..4) -> R_a = 12,
    # U = 12 - 10 = 2; mean 6; one tie block of 3: sigma^2 = 12/12 (8 - 24/42).
    U, p = flow.mann_whitney([1.0, 2.0, 2.0, 3.0], [2.0, 4.0, 5.0])
    assert U == 2.0
    assert p == pytest.approx(
        math.erfc((4 - 0.5) / math.sqrt(8 - 24 / 42) / math.sqrt(2)), rel=1e-12
    )
    assert p == pytest.approx(0.19909, abs=1e-5)
    # no ties: a = 1,2,3 and b = 4,5,6: U = 0, mean 4.5, sigma^2 = 9 * 7 / 12
    U, p = flow.mann_whitney([1, 2, 3], [4, 5, 6])
    assert U == 0 and p == pytest.approx(math.erfc(4.0 / math.sqrt(5.25) / math.sqrt(2)), rel=1e-12)
    assert flow.mann_whitney([2, 2], [2, 2, 2]) == (3.0, 1.0)  # all tied: no evidence
    with pytest.raises(ValueError, match="non-empty"):
        flow.mann_whitney([], [1.0])


def test_group_separation_tests_the_scores_of_each_groups_pairs(planted):
    m = flow.match(planted, layer=2)
    groups = flow.predecessor_groups(planted, 2, planted_stores(planted), flow_match=m)
    sep = flow.group_separation(groups, m, "From RES", "From MLP")
    assert sep.n_pairs == (3, 5)  # f3 three times, f5 five times
    for p in range(3):
        a, b = m.score_FP[3, p].repeat(3), m.score_FP[5, p].repeat(5)
        brute = (a[:, None] > b[None]).double().sum() + 0.5 * (a[:, None] == b[None]).double().sum()
        assert sep.U_P[p] == brute
    assert sep.U_P[0] == 15 and sep.U_P[1] == 0  # f3 is nearer res, f5 nearer mlp


# --- flow graphs -----------------------------------------------------------------------------
def edges(graph):
    return {(u, v): d["cosine"] for u, v, d in graph.edges(data=True)}


def test_flow_graph_builds_exactly_the_planted_edges(planted):
    graph = flow.flow_graph(planted, seed=("resid_post", 2, 3))
    R, M, A = "resid_post", "mlp_out", "attn_out"
    expected = {
        ((R, 0, 4), (R, 1, 7)): 1 / math.sqrt(1.25),
        ((A, 1, 0), (R, 1, 7)): 0.5 / math.sqrt(1.25),
        ((R, 1, 7), (R, 2, 3)): 1 / math.sqrt(1.09),
        ((M, 2, 6), (R, 2, 3)): 0.3 / math.sqrt(1.09),
        ((R, 2, 3), (R, 3, 0)): 1.0,
        ((R, 2, 3), (R, 3, 8)): 1 / math.sqrt(3.25),  # 0.55 >= 0.5; r3[11] (0.45) is cut
        ((M, 3, 5), (R, 3, 8)): 1.5 / math.sqrt(3.25),
    }
    got = edges(graph)
    assert set(got) == set(expected)
    for edge, cosine in expected.items():
        assert got[edge] == pytest.approx(cosine, abs=0.01)
    assert graph.nodes[(M, 2, 6)] == {
        "site": M, "layer": 2, "feature": 6, "hookpoint": "mlp_out.2", "label": "mlp_out.2 latent 6"
    }  # fmt: skip
    assert graph.edges[(M, 2, 6), (R, 2, 3)]["source"] == "mlp"
    # Stricter cuts: r0[4] (0.89) and r3[8] (0.55) leave; modules of kept nodes stay.
    strict = edges(flow.flow_graph(planted, ("resid_post", 2, 3), res_cut=0.9, module_min=0.4))
    assert set(strict) == {((A, 1, 0), (R, 1, 7)), ((R, 1, 7), (R, 2, 3)), ((R, 2, 3), (R, 3, 0))}
    # Given matches are used as they are; only layer 3 is allowed: no backward step at 2.
    only3 = flow.flow_graph(
        planted, (R, 2, 3), layers=[3], flow_matches={3: flow.match(planted, 3)}
    )
    assert set(edges(only3)) == {
        ((R, 2, 3), (R, 3, 0)),
        ((R, 2, 3), (R, 3, 8)),
        ((M, 3, 5), (R, 3, 8)),
    }


def test_flow_graph_rejects_bad_seeds(planted):
    with pytest.raises(ValueError, match="resid_post feature"):
        flow.flow_graph(planted, ("mlp_out", 2, 6))
    with pytest.raises(ValueError, match="outside"):
        flow.flow_graph(planted, ("resid_post", 2, W))


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
