"""saelab.flow predecessor groups on planted codes: the groups, the exact three-part split,
the shuffled-decoder null, Mann-Whitney U and group separation."""

import math

import pytest
import torch
from flow_helpers import D, planted_saes

from saelab import flow
from saelab.activations import ActivationStore


@pytest.fixture(scope="module")
def planted():
    return planted_saes()


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
