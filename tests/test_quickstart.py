"""The README's main command, end to end on the default model at a tiny size."""

import json
import subprocess
import sys

import plotly.offline
import pytest

from saelab.cli import quickstart_metrics


@pytest.mark.slow
def test_quickstart_writes_metrics_report_and_sae(tmp_path):
    out = tmp_path / "qs"
    width = 1024
    cmd = [
        sys.executable,
        "-m",
        "saelab.cli",
        "quickstart",
        "--out",
        str(out),
        "--max-tokens",
        "16384",
        "--eval-max-tokens",
        "2048",
        "--width",
        str(width),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(out / "metrics.json") in result.stdout and str(out / "report.html") in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(quickstart_metrics()) <= set(metrics)
    # even a tiny SAE explains most of the variance and recovers most of the loss
    assert 0.3 < metrics["explained_variance"] < 1.0
    assert 0.3 < metrics["ce_loss_recovered"] <= 1.05
    assert metrics["delta_ce"] > 0 and metrics["kl"] > 0
    page = (out / "report.html").read_text()
    assert page.count(plotly.offline.get_plotlyjs()[:200]) == 1  # plotly.js inlined, once
    assert "Training curves" in page
    # The report's histograms (feature_stats and fires on a harvest of the test split) agree
    # with evaluate's streamed metrics on the same held-out tokens.
    assert f"L0 per token (mean {metrics['l0']:.1f})" in page
    dead = round(metrics["dead_fraction"] * width)
    assert f"Feature density ({dead} of {width} latents never fire)" in page
    assert (out / "sae" / "sae.safetensors").exists() and (out / "sae" / "cfg.json").exists()
