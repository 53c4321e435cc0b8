"""`saelab report` on tables from small real runs on stories260K: the quickstart folder, a
domain comparison, a HierarchicalTopK sweep and an `evaluate` table; the errors. (The flow
command's tables are reported in tests/test_cli.py, beside the run that writes them.)"""

import contextlib
import io
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import plotly.offline
import pytest
from conftest import HOOK

import saelab
from saelab.cli import main, quickstart
from saelab.experiments import compare_domains, compare_hierarchical


def report(*argv) -> tuple[str, str]:
    """(stdout of `saelab report ...`, the report page it wrote)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", *map(str, argv)]) == 0
    page = Path(re.search(r"report: (\S+)", out.getvalue()).group(1)).read_text()
    return out.getvalue(), page


def assert_offline(page: str) -> None:
    assert page.count(plotly.offline.get_plotlyjs()[:200]) == 1  # plotly.js inlined once
    assert not re.search(r"<script[^>]*\bsrc=", page)  # no CDN script


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """The quickstart on stories260K: 2048 training tokens, width 32, 512 held-out tokens."""
    out = tmp_path_factory.mktemp("runs") / "qs"
    return out, quickstart(out, "stories260k", HOOK, 2048, 512, 32, 4.0, "cpu", 0)


def test_quickstart_folder(quickstart_run, tmp_path):
    out, metrics = quickstart_run
    history = pd.read_csv(out / "history.csv")
    assert history["tokens"].iloc[-1] == 7 * 256  # 2032 harvested tokens, batch 256
    stdout, page = report(out, "--out", tmp_path / "r.html")
    assert "metrics.json: metrics (1 figure)" in stdout
    assert "history.csv: training history (1 figure)" in stdout
    assert_offline(page)
    assert "Held-out metrics" in page and "Training curves" in page
    for key in ("fvu", "kl", "ce_loss_recovered"):
        assert f'"{metrics[key]:.4g}"' in page
    assert "<title>saelab report: qs</title>" in page
    # the quickstart's own report shows the same metrics table (one writer, one figure)
    own = (out / "report.html").read_text()
    assert f'"{metrics["fvu"]:.4g}"' in own


@pytest.mark.skipif(not shutil.which("chromium"), reason="no chromium (apt-get install chromium)")
def test_figures_saved_for_a_paper(quickstart_run, tmp_path):
    out, _ = quickstart_run
    stdout, _ = report(
        out, "--out", tmp_path / "r.html", "--figures", tmp_path / "figs", "--format", "svg"
    )
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == ["01-held-out-metrics.svg", "02-training-curves.svg"]
    assert f"figure: {tmp_path / 'figs' / names[1]}" in stdout
    svg = ET.fromstring((tmp_path / "figs" / names[1]).read_text())
    texts = {"".join(el.itertext()) for el in svg.iter() if el.tag.endswith("text")}
    assert {"Training curves", "dead fraction", "training tokens"} <= texts


def test_missing_browser_stops_the_figures(quickstart_run, tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "nothing"))
    out, _ = quickstart_run
    with pytest.raises(SystemExit, match="saelab report: error: no browser at BROWSER_PATH"):
        main(["report", str(out), "--out", str(tmp_path / "r.html"), "--figures", str(tmp_path)])


def test_domain_comparison_table(stories, tmp_path):
    out = tmp_path / "domains"
    table = compare_domains(
        stories,
        HOOK,
        kinds=("topk", "jumprelu"),
        widths=(32,),
        target_l0s=(4,),
        max_tokens=2048,
        eval_max_tokens=512,
        seeds=(0, 1),
        out=out,
        progress=False,
        batch_size=64,
    )
    stdout, page = report(out)  # the folder: table.csv beside the saved SAEs
    assert "table.csv: domain comparison (4 figures)" in stdout
    assert (out / "saelab-report.html").is_file()
    assert_offline(page)
    for title in (
        "Seed means",
        "fvu vs L0 (lower is better)",
        "CE loss recovered vs L0",
        "SAE error: linearly predictable vs nonlinear part",
    ):
        assert title in page
    # seed means by hand, as the table figure formats them
    rows = table[(table.trained_on == "medical") & (table.evaluated_on == "broad")]
    for kind in ("topk", "jumprelu"):
        fvu = rows[rows.kind == kind]["fvu"].tolist()
        assert len(fvu) == 2
        assert f'"{(fvu[0] + fvu[1]) / 2:.4g}"' in page
        assert f'"medical-{kind}-w32-l0_4"' in page


def test_hierarchical_table_and_evaluate_table(stories, medical_store, tmp_path):
    table = compare_hierarchical(
        stories,
        HOOK,
        store=medical_store,
        width=32,
        ks=(2, 4),
        max_tokens=2048,
        eval_max_tokens=512,
        progress=False,
        batch_size=64,
    )
    table.to_csv(tmp_path / "sweep.csv", index=False)
    stdout, page = report(tmp_path / "sweep.csv", "--title", "k sweep")
    assert "sweep.csv: HierarchicalTopK vs TopK (3 figures)" in stdout
    assert_offline(page)
    assert "<title>k sweep</title>" in page and "fvu vs L0 (lower is better)" in page
    for name, fvu in zip(table["sae"], table["fvu"], strict=True):
        assert f'"{name}"' in page and f'"{fvu:.4g}"' in page

    sae = saelab.make_sae("topk", 64, 32, seed=0, k=4)
    texts = saelab.load_corpus("medical", split="test")
    scores = saelab.evaluate(sae, stories, HOOK, texts, max_tokens=256, ctx_len=64, progress=False)
    scores.to_csv(tmp_path / "scores.csv", index=False)
    stdout, page = report(tmp_path / "scores.csv", "--out", tmp_path / "scores.html")
    assert "scores.csv: evaluation (1 figure)" in stdout
    assert '"topk-32"' in page and f'"{scores["fvu"].iloc[0]:.4g}"' in page


def test_unrecognised_tables_and_bad_sources_stop_with_one_line(tmp_path):
    pd.DataFrame({"alpha": [1], "beta": [2]}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(
        SystemExit, match="unrecognised table with columns alpha, beta;.*trained_on"
    ):
        main(["report", str(tmp_path / "other.csv")])
    with pytest.raises(SystemExit, match="no table saelab can draw.*skipped other.csv"):
        main(["report", str(tmp_path)])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["report", str(tmp_path / "missing")])
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SystemExit, match="expected a .csv table or a metrics .json"):
        main(["report", str(tmp_path / "notes.txt")])
    (tmp_path / "metrics.json").write_text(json.dumps({"runs": [1, 2]}))
    with pytest.raises(SystemExit, match="flat JSON object"):
        main(["report", str(tmp_path / "metrics.json")])
    assert not list(tmp_path.glob("*.html"))
