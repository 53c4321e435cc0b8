"""compare_hierarchical on stories260K at a tiny size: the table and its figure."""

import pytest

import saelab
from saelab import pareto
from saelab.activations import training_store

HOOK = "resid_post.2"


@pytest.fixture(scope="module")
def medical_store(stories, medical_texts):
    return saelab.harvest(stories, HOOK, medical_texts, max_tokens=4096, progress=False)


def test_compare_hierarchical_table(stories, medical_store, tmp_path):
    table = pareto.compare_hierarchical(stories, HOOK, train=medical_store, width=128, ks=(2, 4, 8), tokens=4096,
                                        k_sets=("all", [2, 8]), eval_tokens=1024, out=tmp_path, progress=False,
                                        batch_size=64)
    assert list(table.columns) == pareto.HIERARCHICAL_COLUMNS
    assert not table.isna().any().any()
    assert sorted(table["kind"]) == ["hierarchical_topk[2-8]"] * 3 + ["hierarchical_topk[all]"] * 3 + ["topk"] * 3
    assert (table["l0"] <= table["k"] + 1e-9).all()
    hier = table[table["kind"] == "hierarchical_topk[all]"].sort_values("k")
    assert hier["fvu"].is_monotonic_decreasing  # more latents of one SAE reconstruct better
    assert hier["train_seconds"].nunique() == 1  # one training run serves every k
    loaded = saelab.load_sae(tmp_path / "hierarchical_topk[2-8]-w128-K8")
    assert loaded.kind == "hierarchical_topk" and loaded.cfg.k == 8 and loaded.cfg.k_set == [2, 8]
    assert (tmp_path / "topk-w128-k2" / "cfg.json").exists() and (tmp_path / "table.csv").exists()
    fig = pareto.pareto_figure(table, metric="fvu")
    assert {t.name for t in fig.data} == {"hierarchical_topk[all] · w128", "hierarchical_topk[2-8] · w128", "topk · w128"}
    with pytest.raises(ValueError, match="no 'nope'"):
        pareto.pareto_figure(table, metric="nope")


def test_training_store_checks_the_hookpoint(stories, medical_store):
    with pytest.raises(ValueError, match="holds resid_post.2, not resid_post.1"):
        training_store(stories, "resid_post.1", medical_store, 100)


def test_compare_kron_table(stories, medical_store):
    table = pareto.compare_kron(stories, HOOK, train=medical_store, widths=(128,), k=4, head_shapes=(None, (4, 4)),
                                tokens=4096, eval_tokens=1024, progress=False, batch_size=64)
    assert list(table.columns) == pareto.KRON_COLUMNS
    assert not table.isna().any().any()
    assert table["sae"].tolist() == ["topk-w128", "kron-w128-h2x8x8", "kron-w128-h8x4x4"]
    d = stories._module.config.hidden_size
    assert table["encoder_multiply_adds"].tolist() == [128 * d, 2 * 16 * d, 8 * 8 * d]
    assert table["encoder_cost_vs_topk"].tolist() == [1.0, 32 / 128, 64 / 128]
    assert (table["l0"] <= 4 + 1e-9).all() and (table["explained_variance"] > 0).all()
