"""compare_residual on stories260K at a tiny size: roles, ratios to the base, saved SAEs."""

import pytest
import torch
from conftest import HOOK

import saelab
from saelab import features
from saelab.experiments import compare_residual
from saelab.experiments.residual import RATIO_COLUMNS, SPEC_COLUMNS
from saelab.metrics import SUMMARY_METRICS


@pytest.fixture(scope="module")
def residual_run(stories, tmp_path_factory):
    broad = saelab.harvest(
        stories,
        HOOK,
        saelab.load_corpus("broad", split="train", max_texts=400),
        max_tokens=4096,
        progress=False,
    )
    base = saelab.train_sae(broad, kind="topk", width=64, k=4, batch_size=64, progress=False)
    out = tmp_path_factory.mktemp("residual")
    table = compare_residual(
        stories,
        HOOK,
        base,
        widths=(32, 64),
        target_l0=4,
        max_tokens=4096,
        eval_max_tokens=1024,
        out=out,
        progress=False,
        batch_size=64,
    )
    return base, table, out


def test_residual_table_roles_and_widths(residual_run):
    _, table, out = residual_run
    # linear=False: no linear-error columns
    metrics = [m for m in SUMMARY_METRICS if not m.startswith(("linear", "nonlinear"))]
    assert list(table.columns) == [*SPEC_COLUMNS, *metrics, *RATIO_COLUMNS]
    assert not table.isna().any().any()
    assert len(table) == 2 * (1 + 2 + 2)
    for _, rows in table.groupby("evaluated_on"):
        roles = sorted(rows["role"])
        assert roles == ["base", "base+residual", "base+residual", "domain-only", "domain-only"]
    both = table[table["role"] == "base+residual"]
    base_l0 = table[table["role"] == "base"].set_index("evaluated_on")["l0"]
    # The combined code adds at most k=4 residual latents per token to the base's.
    assert (both["l0"] <= both["evaluated_on"].map(base_l0) + 4 + 1e-9).all()
    assert set(table["total_width"]) == {64, 96, 128}
    loaded = saelab.load_sae(out / "base+medical_residual-w32")
    assert loaded.cfg.blocks == ["base", "medical"] and loaded.cfg.block_widths == [64, 32]
    only = saelab.load_sae(out / "medical-only-w128")
    assert only.cfg.k == 8  # the base's k=4 plus the residual's target 4
    # The residual was trained on medical text, so it helps most there.
    med = table[(table["evaluated_on"] == "medical")].set_index("sae")
    assert (
        med.loc["base+medical_residual-w64", "explained_variance"]
        > med.loc["base", "explained_variance"]
    )


@pytest.mark.parametrize("corpus", ["medical", "broad"])
def test_ratios_to_the_base_match_a_separate_evaluation(residual_run, stories, corpus):
    base, table, out = residual_run
    combined = saelab.load_sae(out / "base+medical_residual-w64")
    direct = saelab.evaluate(
        {"base": base, "combined": combined},
        stories,
        HOOK,
        saelab.load_corpus(corpus, split="test"),
        max_tokens=1024,
        linear=False,
        progress=False,
    ).set_index("sae")
    row = table[(table["evaluated_on"] == corpus)].set_index("sae").loc["base+medical_residual-w64"]
    for ratio in RATIO_COLUMNS:
        metric = ratio.removesuffix("_vs_base")
        expected = direct.loc["combined", metric] / direct.loc["base", metric]
        assert row[ratio] == pytest.approx(expected, rel=1e-6)
        assert row[metric] == pytest.approx(direct.loc["combined", metric], rel=1e-6)


def test_decoder_redundancy_of_the_combined_sae(residual_run):
    base, _, out = residual_run
    combined = saelab.load_sae(out / "base+medical_residual-w64")
    red = features.decoder_redundancy(combined)
    assert red.block_F.shape == (64,) and red.reference_F.shape == (64,)
    W = combined.W_dec_FD / combined.W_dec_FD.norm(dim=1, keepdim=True)
    cos = (W[64:] @ W[:64].T).abs()
    assert torch.allclose(red.block_F, cos.max(1).values, atol=1e-6)
    self_cos = (W[:64] @ W[:64].T).abs().fill_diagonal_(0)
    assert torch.allclose(red.reference_F, self_cos.max(1).values, atol=1e-6)
    with pytest.raises(ValueError, match="residual SAE"):
        features.decoder_redundancy(base)
