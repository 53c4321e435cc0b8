"""saelab.flow matching and flow graphs against float64 brute force and planted SAEs: each
target row's nearest source rows, and the graph of the planted chain."""

import math

import pytest
import torch
from flow_helpers import W, planted_saes

import saelab
from saelab import flow


@pytest.fixture(scope="module")
def planted():
    return planted_saes()


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
