"""`saelab flow` and `saelab steer` run in-process on stories260K at a tiny size: the files,
the groups table against direct `saelab.flow` calls on the saved SAEs and the same held-out
tokens, steering at strength 0 against none, and the one-line errors."""

import contextlib
import io
import re

import pandas as pd
import plotly.offline
import pytest
import torch

import saelab
from saelab import flow
from saelab.cli import main
from saelab.commands.common import parse_layers, parse_seed
from saelab.sae import fires

SMALL = ["--model", "stories260k", "--device", "cpu", "--eval-max-tokens", "512"]
SMALL += ["--ctx-len", "64"]
FLOW = ["flow", "--layers", "1-2", "--width", "32", "--k", "2", "--max-tokens", "2048"]
FLOW += ["--cases", "8", *SMALL]
HOOKS = flow.layer_hookpoints([1, 2])


def run_main(argv) -> str:
    """`saelab.cli.main(argv)`'s stdout (it must return 0)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(a) for a in argv]) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow")
    return out, run_main([*FLOW, "--out", out])


@pytest.fixture(scope="module")
def held_out(stories):
    """The held-out stores the command harvests: the test split, 512 tokens, ctx 64."""
    texts = saelab.load_corpus("medical", split="test")
    return saelab.harvest(stories, HOOKS, texts, max_tokens=512, ctx_len=64, progress=False)


def test_flow_writes_tables_saes_and_report(flow_run):
    out, stdout = flow_run
    assert sorted(p.name for p in (out / "saes").iterdir()) == sorted(HOOKS)
    for name in ("groups.csv", "deactivation.csv", "report.html", "saes"):
        assert f"{out / name}" in stdout
    page = (out / "report.html").read_text()
    assert page.count(plotly.offline.get_plotlyjs()[:200]) == 1
    assert "Predecessor groups" in page and "Deactivating a predecessor, layer 2" in page
    assert "Feature flow from resid_post.2" in page
    for phase in ("load model", "train 7 topk SAEs", "deactivation at layers [2]"):
        assert re.search(rf"{re.escape(phase)}.* [\d.]+ s\n", stdout), phase
    assert "From nowhere" in stdout and "top1_pearson" in stdout


def test_groups_csv_equals_predecessor_groups_on_the_saved_saes(flow_run, held_out):
    out, _ = flow_run
    table = pd.read_csv(out / "groups.csv")
    assert list(table.groupby(["layer", "null"]).size().index) == [
        (1, False),
        (1, True),
        (2, False),
        (2, True),
    ]
    sums = table.groupby(["layer", "null"])["share"].sum()
    assert sums.to_numpy() == pytest.approx(1.0, abs=1e-12)
    saes = flow.load_layer_saes(out / "saes")
    for layer in (1, 2):
        target = f"resid_post.{layer}"
        x_ND = held_out[target].get(torch.arange(len(held_out[target])))
        n_pairs = int(fires(saes[target].encode(x_ND)).sum())  # every firing (token, feature)
        for null in (False, True):
            res = flow.predecessor_groups(saes, layer, held_out, null=null, seed=0)
            rows = table[(table["layer"] == layer) & (table["null"] == null)]
            assert list(rows["group"]) == list(flow.GROUPS)
            assert rows["count"].tolist() == res.counts_G.tolist()
            assert rows["share"].tolist() == res.shares_G.tolist()
            assert (rows["n_pairs"] == n_pairs).all() and res.n_pairs == n_pairs
            assert (rows["n_tokens"] == len(x_ND)).all()
            assert rows["exact_agreement"].tolist() == [res.exact_agreement] * 8


def test_deactivation_csv_equals_a_direct_call(flow_run, stories):
    out, _ = flow_run
    table = pd.read_csv(out / "deactivation.csv")
    assert set(table["layer"]) == {2}  # the middle of --layers 1-2
    assert table.groupby("method", sort=False).size().to_dict() == dict.fromkeys(flow.METHODS, 8)
    saes = flow.load_layer_saes(out / "saes")
    texts = saelab.load_corpus("medical", split="test")
    direct = flow.deactivation(
        stories, saes, 2, texts, max_tokens=512, ctx_len=64, n_cases=8, methods=["top1_cosine"]
    )
    mine = table[table["method"] == "top1_cosine"].reset_index(drop=True)
    assert mine["row"].tolist() == direct["row"].tolist()
    assert mine["target"].tolist() == direct["target"].tolist()
    assert mine["z_new"].tolist() == pytest.approx(direct["z_new"].tolist(), rel=1e-6)


def test_flow_with_saes_reuses_them_and_skips_deactivation(flow_run, tmp_path):
    out, _ = flow_run
    again = tmp_path / "again"
    argv = ["flow", "--saes", out / "saes", "--deactivation-layers", "none", *SMALL]
    stdout = run_main([*argv, "--out", again])
    assert not (again / "saes").exists() and f"{out / 'saes'}" in stdout
    first, second = pd.read_csv(out / "groups.csv"), pd.read_csv(again / "groups.csv")
    pd.testing.assert_frame_equal(first, second)  # --layers defaults to the SAEs' 1-2
    assert len(pd.read_csv(again / "deactivation.csv")) == 0


def steered(stdout: str) -> tuple[str, str]:
    unsteered = re.search(r"^unsteered: (.*)$", stdout, re.M).group(1)
    return unsteered, re.search(r"^steered: +(.*)$", stdout, re.M).group(1)


def test_steer_at_strength_zero_prints_the_unsteered_text(flow_run, held_out):
    out, _ = flow_run
    saes = flow.load_layer_saes(out / "saes")
    x_ND = held_out["resid_post.2"].get(torch.arange(len(held_out["resid_post.2"])))
    feature = int(fires(saes["resid_post.2"].encode(x_ND)).sum(0).argmax())  # fires most
    argv = ["steer", "--saes", out / "saes", "--seed", f"resid_post.2:{feature}", *SMALL]
    argv += ["--max-new-tokens", "12"]
    zero = run_main([*argv, "--strength", "0"])
    unsteered, text = steered(zero)
    assert text == unsteered and len(unsteered) > 4
    graph = flow.flow_graph(saes, ("resid_post", 2, feature))
    assert f"plan: {graph.number_of_nodes()} terms (cumulative, strength 0)" in zero
    strong = run_main([*argv, "--strength", "16"])
    assert steered(strong)[0] == unsteered and steered(strong)[1] != unsteered
    sampled = run_main([*argv, "--strength", "0", "--sample", "--seed-value", "3"])
    assert steered(sampled)[0] == steered(sampled)[1]


def test_layer_and_seed_specs():
    assert parse_layers("8-10,14") == [8, 9, 10, 14] and parse_layers(" 12 ") == [12]
    assert parse_seed("resid_post.12:1234") == ("resid_post", 12, 1234)
    for spec, message in [
        ("8-x", "is not a layer or a range"),
        ("", "is not a layer or a range"),
        ("5-3", "runs backwards"),
        ("0-2", "layers >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_layers(spec)
    with pytest.raises(ValueError, match="write hookpoint:feature"):
        parse_seed("resid_post.12")
    with pytest.raises(ValueError, match="grows from a resid_post feature"):
        parse_seed("mlp_out.3:7")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["flow", "--layers", "2-1"], "runs backwards"),
        (["steer", "--saes", "SAES", "--seed", "resid_post.2"], "bad seed 'resid_post.2'"),
    ],
)
def test_bad_specs_stop_argparse_with_the_message(flow_run, capsys, argv, message):
    argv = [str(flow_run[0] / "saes") if a == "SAES" else a for a in argv]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["steer", "--seed", "resid_post.4:0"], "no SAE at resid_post.4"),
        (["steer", "--seed", "resid_post.2:32"], "feature 32 is outside the resid_post.2 SAE"),
        (["steer", "--seed", "resid_post.2:0", "--schedule", "single"], "needs --layer"),
        (["steer", "--seed", "resid_post.2:0", "--schedule", "steep"], "unknown --schedule"),
        (["flow", "--deactivation-layers", "3"], "[3] are not among --layers [1, 2]"),
        (["flow", "--layers", "1-3"], "mlp_out.3, resid_post.3 for --layers [1, 2, 3]"),
        (["flow", "--methods", "top1_cosine,guess"], "unknown --methods ['guess']"),
    ],
)
def test_bad_requests_stop_before_loading_the_model(flow_run, argv, message):
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--saes", str(flow_run[0] / "saes"), "--model", "no-such-model"])
    assert message in str(stop.value.code)


def test_missing_saes_folder_and_layers(tmp_path):
    for command in (["steer", "--seed", "resid_post.2:0"], ["flow"]):
        with pytest.raises(SystemExit) as stop:
            main([*command, "--saes", str(tmp_path / "nope")])
        assert f"--saes folder {tmp_path / 'nope'} does not exist" in str(stop.value.code)
    with pytest.raises(SystemExit, match="--layers is needed"):
        main(["flow", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"the model has layers 0\.\.4, not \[5, 6\]"):
        main(["flow", "--layers", "4-6", "--out", str(tmp_path), *SMALL])


def test_report_redraws_the_flow_tables(flow_run, tmp_path):
    from saelab.figures.tables import table_figures

    out, _ = flow_run
    stdout = run_main(["report", out, "--out", tmp_path / "flow.html"])
    assert "groups.csv: flow groups (1 figure)" in stdout
    assert "deactivation.csv: flow deactivation (1 figure)" in stdout
    page = (tmp_path / "flow.html").read_text()
    assert page.count(plotly.offline.get_plotlyjs()[:200]) == 1
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert "Predecessor groups" in page and "Deactivating a predecessor, layer 2" in page
    groups = pd.read_csv(out / "groups.csv")
    (shares,) = table_figures(groups)
    observed = groups[~groups["null"]]
    for trace in shares.data[:8]:  # the observed bars: one per group, a share per layer
        expected = observed[observed["group"] == trace.name].sort_values("layer")["share"]
        assert list(trace.y) == pytest.approx(expected.tolist(), abs=0)
