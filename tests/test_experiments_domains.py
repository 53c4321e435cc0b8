"""compare_domains on stories260K at a tiny size: the table, saved SAEs; summarize by hand."""

import math
import statistics

import pandas as pd
import pytest
from conftest import HOOK

import saelab
from saelab.experiments import DOMAIN_GROUP, common, compare_domains, summarize
from saelab.experiments.domains import SPEC_COLUMNS
from saelab.metrics import SUMMARY_METRICS

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
        mp.setattr(common, "harvest", counting_harvest)
        table = compare_domains(
            stories,
            HOOK,
            kinds=KINDS,
            widths=WIDTHS,
            target_l0s=TARGETS,
            max_tokens=4096,
            eval_max_tokens=1024,
            seeds=SEEDS,
            out=out,
            progress=False,
            batch_size=16,  # 256 steps: JumpReLU (constant θ at first) reaches its L0
        )
    return table, out, harvested


def test_table_has_one_row_per_sae_and_evaluation_set(run):
    table, _, harvested = run
    metrics = [m for m in SUMMARY_METRICS if m in table.columns]
    assert list(table.columns) == [*SPEC_COLUMNS, *metrics]
    # evaluate's default (linear=True, ce=True) reports every headline metric
    assert metrics == SUMMARY_METRICS
    n_saes = 2 * len(KINDS) * len(WIDTHS) * len(TARGETS) * len(SEEDS)
    assert len(table) == 2 * n_saes
    assert table["sae"].nunique() == n_saes
    assert not table.isna().any().any()
    assert set(table["trained_on"]) == set(table["evaluated_on"]) == {"medical", "broad"}
    assert (table.groupby("sae")["evaluated_on"].nunique() == 2).all()
    assert harvested == [4096, 4096]  # one training harvest per corpus; evaluation harvests apart


def test_target_l0s_are_honoured(run):
    table, _, _ = run
    topk = table[table["kind"] == "topk"]
    assert (topk["l0"] <= topk["target_l0"] + 1e-9).all()  # TopK fires at most k latents
    jump = table[table["kind"] == "jumprelu"]
    assert jump["l0"].between(1, 4 * jump["target_l0"]).all()


def test_saes_and_table_are_saved(run, stories):
    table, out, _ = run
    saved = pd.read_csv(out / "table.csv")
    pd.testing.assert_frame_equal(saved, table, check_dtype=False, rtol=0, atol=0)
    for name, rows in table.groupby("sae"):
        sae = saelab.load_sae(out / name, model=stories, hookpoint=HOOK)
        row = rows.iloc[0]
        assert (sae.cfg.kind, sae.cfg.width, sae.cfg.training["seed"]) == (
            row["kind"],
            row["width"],
            row["seed"],
        )
        assert sae.cfg.training["batch_size"] == 16  # train_options override the JumpReLU defaults
        if row["kind"] == "jumprelu":
            # the kind's other defaults still apply: θ at its own rate, the shared lr rule
            assert sae.cfg.threshold_lr == 0.02 and sae.cfg.training["lr"] is None
            assert sae.cfg.target_l0 == row["target_l0"]
        else:
            assert sae.cfg.k == row["target_l0"]
    assert (out / "medical-jumprelu-w128-l0_8-s1" / "cfg.json").exists()


def test_summarize_matches_statistics_by_hand(run):
    table, _, _ = run
    summary = summarize(table, by=DOMAIN_GROUP)
    assert len(summary) == len(table) // len(SEEDS)
    assert (summary["n_seeds"] == len(SEEDS)).all()
    for row in summary.to_dict("records"):
        mask = (table[DOMAIN_GROUP] == pd.Series({k: row[k] for k in DOMAIN_GROUP})).all(axis=1)
        for metric in SUMMARY_METRICS:
            values = [float(v) for v in table.loc[mask, metric]]
            assert len(values) == len(SEEDS)
            assert math.isclose(row[f"{metric}_mean"], statistics.fmean(values), rel_tol=1e-12)
            assert math.isclose(
                row[f"{metric}_std"], statistics.stdev(values), rel_tol=1e-9, abs_tol=1e-15
            )


def test_summarize_on_known_numbers():
    table = pd.DataFrame(
        {
            "kind": ["a", "a", "a", "b"],
            "fvu": [1.0, 2.0, 4.0, 5.0],
            "l0": [3.0, 3.0, 6.0, 1.0],
            "seed": [0, 1, 2, 0],
            "other": [9, 9, 9, 9],
        }
    )
    summary = summarize(table, by=["kind"]).set_index("kind")
    assert list(summary.columns) == ["n_seeds", "l0_mean", "l0_std", "fvu_mean", "fvu_std"]
    assert summary.loc["a", "n_seeds"] == 3 and summary.loc["b", "n_seeds"] == 1
    assert summary.loc["a", "fvu_mean"] == pytest.approx(7 / 3, rel=1e-15)
    # ddof 1: squared deviations (16 + 1 + 25) / 9 summed, over n - 1 = 2
    assert summary.loc["a", "fvu_std"] == pytest.approx(math.sqrt(42 / 9 / 2), rel=1e-15)
    assert summary.loc["a", "l0_std"] == pytest.approx(math.sqrt(3), rel=1e-15)
    assert math.isnan(summary.loc["b", "fvu_std"])  # one seed: no spread to estimate
    with pytest.raises(ValueError, match="no column"):
        summarize(table, by=["width"])


def test_kinds_are_checked_before_any_work(stories, monkeypatch):
    def no_harvest(*args, **kwargs):
        raise AssertionError("harvested before checking every kind")

    monkeypatch.setattr(common, "harvest", no_harvest)
    with pytest.raises(ValueError, match="relu"):
        compare_domains(stories, HOOK, kinds=("topk", "relu"), max_tokens=1024, progress=False)
    with pytest.raises(ValueError, match="unknown SAE kind 'nope'"):
        compare_domains(stories, HOOK, kinds=("nope",), max_tokens=1024, progress=False)


def test_any_kind_with_a_sparsity_option_is_compared(stories):
    table = compare_domains(
        stories,
        HOOK,
        kinds=("kron",),
        widths=(128,),
        target_l0s=(4,),
        max_tokens=2048,
        eval_max_tokens=256,
        progress=False,
        batch_size=64,
    )
    assert set(table["kind"]) == {"kron"} and len(table) == 4
    assert (table["l0"] <= 4 + 1e-9).all()
