"""The README's main command, end to end on the default model at a tiny size."""

import json
import subprocess
import sys

import pytest

from saelab.cli import QUICKSTART_METRICS


@pytest.mark.slow
def test_quickstart_writes_metrics_report_and_sae(tmp_path):
    out = tmp_path / "qs"
    cmd = [sys.executable, "-m", "saelab.cli", "quickstart", "--out", str(out), "--tokens", "16384",
           "--eval-tokens", "2048", "--width", "1024"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(out / "metrics.json") in result.stdout and str(out / "report.html") in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(QUICKSTART_METRICS) <= set(metrics)
    # even a tiny SAE explains most of the variance and recovers most of the loss
    assert 0.3 < metrics["explained_variance"] < 1.0
    assert 0.3 < metrics["ce_loss_recovered"] <= 1.05
    assert metrics["delta_ce"] > 0 and metrics["kl"] > 0
    page = (out / "report.html").read_text()
    assert "plotly" in page and "Training curves" in page and len(page) > 1_000_000  # plotly.js inlined
    assert (out / "sae" / "sae.safetensors").exists() and (out / "sae" / "cfg.json").exists()
