"""Causal deactivation against forward hooks written by hand, and its baselines' pickers
against brute force."""

import itertools

import pytest
import torch

import saelab
from saelab.flow import deactivation, deactivation_sweep, match
from saelab.flow.deactivation import harvest_layer, pick_cases, target_after
from saelab.flow.pickers import assignment, method_picks, pearson_best
from saelab.models import hook_module, parse_hookpoint

HOOKS = ["resid_post.1", "resid_post.2", "mlp_out.2", "attn_out.2"]


@pytest.fixture(scope="module")
def saes(stories, medical_texts):
    stores = saelab.harvest(
        stories, HOOKS, medical_texts, max_tokens=8192, ctx_len=64, progress=False
    )
    # one seed per hookpoint: a shared seed starts every SAE from the same decoder
    return {
        h: saelab.train_sae(stores[h], "topk", 128, k=4, batch_size=128, seed=i, progress=False)
        for i, h in enumerate(HOOKS)
    }


@pytest.fixture(scope="module")
def block(stories, saes):
    texts = saelab.load_corpus("medical", split="test", max_texts=100)
    return harvest_layer(stories, saes, 2, texts, max_tokens=1024, ctx_len=64)


def hand_target_code(stories, block, case, p, features, r):
    """The target's code after `h_t += (r-1)·Σ a_j W_dec[j]` at source `p` (res, mlp, att),
    by forward hooks on the plain module."""
    source = block.hookpoints[p + 1]
    sae = block.saes[p + 1]
    store = block.stores[0]
    ctx, pos = int(store.context_N[case.row]), int(store.position_N[case.row])
    a = block.codes[p + 1][case.row, features].double()
    delta = ((r - 1) * a @ sae.W_dec_FD.detach().double()[features]).float()
    hf = stories._module
    seen = {}

    def edit(mod, inputs, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h.clone()
        h[0, pos] += delta
        return (h, *output[1:]) if isinstance(output, tuple) else h

    def read(mod, inputs, output):
        seen["h"] = (output[0] if isinstance(output, tuple) else output)[0, pos]

    handles = [
        hook_module(hf, parse_hookpoint(stories, source)).register_forward_hook(edit),
        hook_module(hf, parse_hookpoint(stories, block.hookpoints[0])).register_forward_hook(read),
    ]
    try:
        with torch.no_grad():
            hf(store.tokens_CT[ctx : ctx + 1])
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        return float(block.saes[0].encode(seen["h"][None])[0, case.target])


def test_removal_matches_forward_hooks_and_r1_changes_nothing(stories, saes, block):
    cases = pick_cases(block, 24, seed=1)
    picks = method_picks("top5", block, cases, match(saes, 2))
    assert torch.equal(
        target_after(stories, block, cases, picks, 1.0), torch.tensor([c.z_old for c in cases])
    )
    z_new = target_after(stories, block, cases, picks, 0.0)
    assert len({p for p, _ in picks}) > 1  # edits at more than one kind of source are checked
    for case, (p, features), z in zip(cases, picks, z_new.tolist(), strict=True):
        expected = hand_target_code(stories, block, case, p, features, 0.0)
        assert z == pytest.approx(expected, abs=1e-4)
    assert (z_new < torch.tensor([c.z_old for c in cases])).any()  # the removal bites


def test_methods_table_and_exhaustive_is_best(stories, saes):
    texts = saelab.load_corpus("medical", split="test", max_texts=100)
    table = deactivation(
        stories, saes, 2, texts, max_tokens=1024, ctx_len=64, n_cases=32, exhaustive_cases=8
    )
    by = {m: t.set_index("row") for m, t in table.groupby("method")}
    assert len(by["top1_cosine"]) == 32 and len(by["exhaustive"]) == 8
    assert (table["ac"] == 1 - table["z_new"] / table["z_old"]).all()
    # exhaustive search tries every active single predecessor, so it does at least as well as
    # any single-feature pick that was active on the token
    exh = by["exhaustive"]
    for method in ("top1_cosine", "random_top5", "top1_pearson", "permutation"):
        other = by[method].loc[exh.index]
        assert (exh["z_new"] <= other["z_new"] + 1e-6).all(), method
    assert by["top1_cosine"]["ac"].mean() > by["random_top5"]["ac"].mean()


def test_sweep_r1_is_the_clean_run(stories, saes):
    texts = saelab.load_corpus("medical", split="test", max_texts=100)
    table = deactivation_sweep(
        stories, saes, 2, texts, rs=(1.0, 0.0, 2.0), max_tokens=1024, ctx_len=64, n_cases=16
    )
    clean = table.set_index("r").loc[1.0]
    assert clean["ac"] == 0 and clean["success_rate"] == 0 and clean["relative_ce_change"] == 0
    assert table.set_index("r").loc[0.0, "ac"] > 0 > table.set_index("r").loc[2.0, "ac"]


def test_pearson_best_matches_brute_force(block):
    source, feature = pearson_best(block, chunk=7)
    codes = [c.double() for c in block.codes]
    for i in range(0, codes[0].shape[1], 17):
        if codes[0][:, i].std() == 0:
            continue
        best = max(
            (
                (p, j, torch.corrcoef(torch.stack([codes[0][:, i], codes[p + 1][:, j]]))[0, 1])
                for p in range(3)
                for j in range(codes[p + 1].shape[1])
                if codes[p + 1][:, j].std() > 0
            ),
            key=lambda t: t[2],
        )
        assert (int(source[i]), int(feature[i])) == best[:2]


def test_assignment_is_the_best_permutation():
    target, res = (
        saelab.make_sae("topk", 8, 5, k=2, seed=1),
        saelab.make_sae("topk", 8, 5, k=2, seed=2),
    )
    perm = assignment([target, res])
    unit = [
        s.W_dec_FD.detach().double() / s.W_dec_FD.detach().double().norm(dim=1, keepdim=True)
        for s in (target, res)
    ]
    cos = unit[0] @ unit[1].T
    best = max(itertools.permutations(range(5)), key=lambda q: sum(cos[i, q[i]] for i in range(5)))
    assert perm.tolist() == list(best)


def test_train_layer_saes_from_one_aligned_harvest(stories, medical_texts, tmp_path):
    from saelab.flow import layer_hookpoints, load_layer_saes, save_layer_saes, train_layer_saes

    names = layer_hookpoints([2, 1])
    assert names == [
        "resid_post.0",
        "attn_out.1",
        "mlp_out.1",
        "resid_post.1",
        "attn_out.2",
        "mlp_out.2",
        "resid_post.2",
    ]
    stores = saelab.harvest(
        stories,
        names,
        medical_texts,
        max_tokens=2048,
        ctx_len=64,
        cache=tmp_path / "cache",
        dtype=torch.float16,
        progress=False,
    )
    saes = train_layer_saes(
        stories, [1, 2], stores=stores, width=32, k=2, batch_size=128, progress=False
    )
    assert list(saes) == names and all(saes[n].cfg.hookpoint == n for n in names)
    again = load_layer_saes(save_layer_saes(saes, tmp_path / "saes"), model=stories)
    assert all(torch.equal(again[n].W_dec_FD, saes[n].W_dec_FD) for n in names)
    assert match(again, 2).index_FP.shape == (32, 3)
    with pytest.raises(ValueError, match="layers >= 1"):
        layer_hookpoints([0, 1])
    with pytest.raises(ValueError, match="lack"):
        train_layer_saes(stories, [3], stores=stores, width=32, k=2)
