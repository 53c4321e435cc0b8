"""compare_domains on stories260K at a tiny size: the table, saved SAEs, summary and figures."""

import math

import pandas as pd
import pytest
import torch

import saelab
from saelab import compare, features
from saelab.compare import (
    COLUMNS,
    METRICS,
    ce_figure,
    compare_domains,
    error_bars_figure,
    pareto_figure,
    summarize,
)

HOOK = "resid_post.2"
KINDS, WIDTHS, TARGETS, SEEDS = ("topk", "jumprelu"), (128,), (4, 8), (0, 1)


@pytest.fixture(scope="module")
def run(stories, tmp_path_factory):
    """One comparison (2 kinds x 2 targets x 2 seeds per corpus), counting harvests."""
    harvested = []

    def counting_harvest(*args, **kwargs):
        harvested.append(kwargs["max_tokens"])
        return saelab.harvest(*args, **kwargs)

    out = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compare, "harvest", counting_harvest)
        table = compare_domains(stories, HOOK, kinds=KINDS, widths=WIDTHS, l0_targets=TARGETS, tokens=4096,
                                eval_tokens=1024, seeds=SEEDS, out=out, progress=False, batch_size=64)
    return table, out, harvested


def test_table_has_one_row_per_sae_and_evaluation_set(run):
    table, _, harvested = run
    assert list(table.columns) == COLUMNS
    n_saes = 2 * len(KINDS) * len(WIDTHS) * len(TARGETS) * len(SEEDS)
    assert len(table) == 2 * n_saes
    assert table["sae"].nunique() == n_saes
    assert not table.isna().any().any()
    assert set(table["trained_on"]) == set(table["evaluated_on"]) == {"medical", "broad"}
    assert (table.groupby("sae")["evaluated_on"].nunique() == 2).all()
    assert harvested == [4096, 4096]  # one training harvest per corpus; evaluation harvests separately


def test_l0_targets_are_honoured(run):
    table, _, _ = run
    topk = table[table["kind"] == "topk"]
    assert (topk["l0"] <= topk["l0_target"] + 1e-9).all()  # TopK fires at most k latents
    jump = table[table["kind"] == "jumprelu"]
    assert jump["l0"].between(1, 4 * jump["l0_target"]).all()


def test_saes_and_table_are_saved(run, stories):
    table, out, _ = run
    saved = pd.read_csv(out / "table.csv")
    assert list(saved.columns) == COLUMNS and len(saved) == len(table)
    for name, rows in table.groupby("sae"):
        sae = saelab.load_sae(out / name, model=stories, hookpoint=HOOK)
        row = rows.iloc[0]
        assert (sae.cfg.kind, sae.cfg.width, sae.cfg.training["seed"]) == (row["kind"], row["width"], row["seed"])
        assert sae.cfg.training["batch_size"] == 64  # train_options override the JumpReLU defaults
        if row["kind"] == "jumprelu":
            assert sae.cfg.training["lr"] == 1e-3 and sae.cfg.target_l0 == row["l0_target"]
        else:
            assert sae.cfg.k == row["l0_target"]


def test_summarize_matches_a_hand_groupby(run):
    table, _, _ = run
    summary = summarize(table)
    assert len(summary) == len(table) // len(SEEDS)
    assert (summary["n_seeds"] == len(SEEDS)).all()
    keys = ["trained_on", "evaluated_on", "kind", "width", "l0_target"]
    by_hand = table.groupby(keys)[METRICS].agg(["mean", "std"])
    for row in summary.itertuples():
        expected = by_hand.loc[tuple(getattr(row, k) for k in keys)]
        for metric in METRICS:
            assert math.isclose(getattr(row, f"{metric}_mean"), expected[(metric, "mean")], rel_tol=1e-12)
            assert math.isclose(getattr(row, f"{metric}_std"), expected[(metric, "std")], rel_tol=1e-12,
                                abs_tol=1e-15)


def test_figures_have_one_trace_per_line(run):
    table, _, _ = run
    lines = 2 * len(KINDS) * len(WIDTHS)  # trained_on x kind x width
    assert len(pareto_figure(table, evaluated_on="medical").data) == lines
    assert len(pareto_figure(table, metric="explained_variance").data) == 2 * lines  # a panel per evaluation set
    assert len(ce_figure(table, evaluated_on="broad").data) == lines
    bars = error_bars_figure(table, evaluated_on="medical")
    assert len(bars.data) == 2 and len(bars.data[0].x) == len(table) // len(SEEDS) // 2
    fig = pareto_figure(table, evaluated_on="medical")
    assert all(len(trace.error_y.array) == len(TARGETS) for trace in fig.data)
    with pytest.raises(ValueError, match="no rows evaluated on"):
        pareto_figure(table, evaluated_on="legal")


def test_unknown_kind_is_rejected_before_any_work(stories):
    with pytest.raises(ValueError, match="relu"):
        compare_domains(stories, HOOK, kinds=("relu",), tokens=1024, progress=False)


def test_figures_render_to_html(run):
    table, out, _ = run
    for fig in (pareto_figure(table), ce_figure(table), error_bars_figure(table)):
        assert "plotly" in fig.to_html(include_plotlyjs=False)
    assert (out / "medical-jumprelu-w128-l0_8-s1" / "cfg.json").exists()


# --- residual SAEs -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def residual_run(stories, medical_texts, tmp_path_factory):
    broad = saelab.harvest(stories, HOOK, saelab.load_corpus("broad", split="train", max_texts=400),
                           max_tokens=4096, progress=False)
    base = saelab.train_sae(broad, kind="topk", width=64, k=4, batch_size=64, progress=False)
    out = tmp_path_factory.mktemp("residual")
    table = compare.compare_residual(stories, HOOK, base, widths=(32, 64), k=4, tokens=4096, eval_tokens=1024,
                                     out=out, progress=False, batch_size=64)
    return base, table, out


def test_residual_table_roles_and_ratios(residual_run):
    _, table, out = residual_run
    assert list(table.columns) == compare.RESIDUAL_COLUMNS
    assert not table.isna().any().any()
    assert len(table) == 2 * (1 + 2 + 2)
    for corpus, rows in table.groupby("evaluated_on"):
        roles = rows.set_index("sae")["role"].to_dict()
        assert sorted(roles.values()) == ["base", "base+residual", "base+residual", "domain-only", "domain-only"]
        base_row = rows[rows["role"] == "base"].iloc[0]
        assert base_row["ce_loss_recovered_vs_base"] == 1.0
        for r in rows.itertuples():
            assert r.ce_loss_recovered_vs_base == pytest.approx(r.ce_loss_recovered / base_row["ce_loss_recovered"])
    both = table[table["role"] == "base+residual"]
    base_l0 = table[table["role"] == "base"].set_index("evaluated_on")["l0"]
    # The combined code adds at most k=4 residual latents per token to the base's.
    assert (both["l0"] <= both["evaluated_on"].map(base_l0) + 4 + 1e-9).all()
    assert set(table["total_width"]) == {64, 96, 128}
    loaded = saelab.load_sae(out / "base+medical_residual-w32")
    assert loaded.cfg.blocks == ["base", "medical"] and loaded.cfg.block_widths == [64, 32]
    assert (out / "medical-only-w128" / "cfg.json").exists()
    # The residual was trained on medical text, so it helps most there.
    med = table[(table["evaluated_on"] == "medical")].set_index("sae")
    assert med.loc["base+medical_residual-w64", "explained_variance"] > med.loc["base", "explained_variance"]


def test_residual_figures_and_redundancy(residual_run):
    base, table, out = residual_run
    fig = compare.retention_figure(table)
    assert {t.name for t in fig.data} == {"base", "base+residual", "domain-only"}
    combined = saelab.load_sae(out / "base+medical_residual-w64")
    red = features.decoder_redundancy(combined)
    assert red.block_F.shape == (64,) and red.reference_F.shape == (64,)
    W = combined.W_dec_FD / combined.W_dec_FD.norm(dim=1, keepdim=True)
    cos = (W[64:] @ W[:64].T).abs()
    assert torch.allclose(red.block_F, cos.max(1).values, atol=1e-6)
    self_cos = (W[:64] @ W[:64].T).abs().fill_diagonal_(0)
    assert torch.allclose(red.reference_F, self_cos.max(1).values, atol=1e-6)
    assert len(compare.redundancy_figure(red).data) == 2
    with pytest.raises(ValueError, match="residual SAE"):
        features.decoder_redundancy(base)
