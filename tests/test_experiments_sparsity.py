"""compare_hierarchical and compare_kron on stories260K at a tiny size; training_store."""

import pandas as pd
import pytest
from conftest import HOOK

import saelab
from saelab.experiments import compare_hierarchical, compare_kron, training_store
from saelab.experiments.sparsity import HIERARCHICAL_SPEC, KRON_COST, KRON_SPEC
from saelab.metrics import SUMMARY_METRICS

# linear=False: every headline metric but the linear-error ones
METRICS = [m for m in SUMMARY_METRICS if not m.startswith(("linear", "nonlinear"))]
KS = (2, 4, 8)


@pytest.fixture(scope="module")
def hierarchical_run(stories, medical_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("hierarchical")
    table = compare_hierarchical(
        stories,
        HOOK,
        store=medical_store,
        width=128,
        ks=KS,
        max_tokens=4096,
        k_sets=("all", [2, 8]),
        eval_max_tokens=1024,
        out=out,
        progress=False,
        batch_size=64,
    )
    return table, out


def test_compare_hierarchical_table(hierarchical_run):
    table, out = hierarchical_run
    assert list(table.columns) == [*HIERARCHICAL_SPEC, *METRICS, "train_seconds"]
    assert not table.isna().any().any()
    assert sorted(table["kind"]) == (
        ["hierarchical_topk[2-8]"] * 3 + ["hierarchical_topk[all]"] * 3 + ["topk"] * 3
    )
    assert (table["l0"] <= table["k"] + 1e-9).all()
    hier = table[table["kind"] == "hierarchical_topk[all]"].sort_values("k")
    assert hier["fvu"].is_monotonic_decreasing  # more latents of one SAE reconstruct better
    loaded = saelab.load_sae(out / "hierarchical_topk[2-8]-w128-K8")
    assert loaded.kind == "hierarchical_topk" and loaded.cfg.k == 8 and loaded.cfg.k_set == [2, 8]
    assert (out / "topk-w128-k2" / "cfg.json").exists() and (out / "table.csv").exists()


@pytest.mark.parametrize("k_set", ["all", "2-8"])
def test_hierarchical_rows_match_a_direct_evaluation_of_the_saved_sae(
    hierarchical_run, stories, k_set
):
    table, out = hierarchical_run
    hier = saelab.load_sae(out / f"hierarchical_topk[{k_set}]-w128-K8")
    direct = saelab.evaluate(
        hier,
        stories,
        HOOK,
        saelab.load_corpus("medical", split="test"),
        max_tokens=1024,
        linear=False,
        progress=False,
        ks=list(KS),
    )
    rows = table[table["kind"] == f"hierarchical_topk[{k_set}]"].set_index("k")
    for k in KS:
        got = rows.loc[k]
        want = direct[direct["k"] == k].iloc[0]
        for metric in METRICS:
            assert got[metric] == pytest.approx(want[metric], rel=1e-6, abs=1e-9), (k, metric)


def test_topk_rows_match_a_direct_evaluation_of_the_saved_saes(hierarchical_run, stories):
    table, out = hierarchical_run
    saes = {f"topk-w128-k{k}": saelab.load_sae(out / f"topk-w128-k{k}") for k in KS}
    direct = saelab.evaluate(
        saes,
        stories,
        HOOK,
        saelab.load_corpus("medical", split="test"),
        max_tokens=1024,
        linear=False,
        progress=False,
    ).set_index("sae")
    rows = table.set_index("sae")
    for name in saes:
        assert rows.loc[name, "k"] == saes[name].cfg.k
        for metric in METRICS:
            assert rows.loc[name, metric] == pytest.approx(
                direct.loc[name, metric], rel=1e-6, abs=1e-9
            )
    saved = pd.read_csv(out / "table.csv")
    pd.testing.assert_frame_equal(saved, table, check_dtype=False, rtol=0, atol=0)


def test_training_store_checks_the_hookpoint(stories, medical_store):
    with pytest.raises(ValueError, match="holds resid_post.2, not resid_post.1"):
        training_store(stories, "resid_post.1", "medical", medical_store, 100)
    assert training_store(stories, HOOK, "medical", medical_store, 100) is medical_store


def test_compare_kron_table(stories, medical_store):
    table = compare_kron(
        stories,
        HOOK,
        store=medical_store,
        widths=(128,),
        k=4,
        head_shapes=(None, (4, 4)),
        max_tokens=4096,
        eval_max_tokens=1024,
        progress=False,
        batch_size=64,
    )
    assert list(table.columns) == [*KRON_SPEC, *METRICS, *KRON_COST]
    assert not table.isna().any().any()
    assert table["sae"].tolist() == ["topk-w128", "kron-w128-h2x8x8", "kron-w128-h8x4x4"]
    assert table[["heads", "m", "n"]].values.tolist() == [[0, 0, 0], [2, 8, 8], [8, 4, 4]]
    d = stories._module.config.hidden_size
    assert table["encoder_multiply_adds"].tolist() == [128 * d, 2 * 16 * d, 8 * 8 * d]
    assert table["encoder_cost_vs_topk"].tolist() == [1.0, 32 / 128, 64 / 128]
    assert (table["l0"] <= 4 + 1e-9).all() and (table["explained_variance"] > 0).all()
