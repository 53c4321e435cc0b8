"""The dashboards notebook the browser tests open: every widget of saelab.widgets built on
stories260K (5 blocks of width 64) with tiny TopK SAEs, in seconds rather than the minutes of
the walkthrough notebooks, plus the synthetic metrics table its MetricsDashboard shows."""

from __future__ import annotations

import itertools
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd

from saelab.metrics import SUMMARY_METRICS

HERE = Path(__file__).parent
#: The flow graph's hookpoints (as tests/test_flow_explorer.py); the explorer uses resid_post.2.
HOOKS = [
    "resid_post.1",
    "resid_post.2",
    "mlp_out.2",
    "attn_out.2",
    "resid_post.3",
    "mlp_out.3",
    "attn_out.3",
]
EXPLORER_HOOK = "resid_post.2"
FLOW_STRENGTH = 20.0  # the slider's start: large enough that steering changes the text
FLOW_PROMPT = "Once upon a time"
NEW_TOKENS = 12


def metrics_table() -> pd.DataFrame:
    """2 trained_on x 2 evaluated_on x 2 kinds x 2 widths x 3 target L0s, one seed, numbers
    from a seeded RNG: with one seed each plotted point is a table value."""
    rng = np.random.default_rng(0)
    rows = []
    corpora, kinds = ("broad", "medical"), ("topk", "jumprelu")
    for trained, kind, width, target in itertools.product(corpora, kinds, (64, 128), (8, 16, 32)):
        for evaluated in corpora:
            row = {
                "sae": f"{trained}-{kind}-w{width}-l0_{target}-s0",
                "trained_on": trained,
                "evaluated_on": evaluated,
                "kind": kind,
                "width": width,
                "seed": 0,
                "target_l0": target,
            }
            row.update({m: float(rng.random()) for m in SUMMARY_METRICS})
            row["l0"] = target * (1 + 0.1 * rng.random())
            rows.append(row)
    return pd.DataFrame(rows)


SETUP = f"""\
import sys
sys.path.insert(0, {str(HERE)!r})
import saelab
from saelab.widgets import FeatureExplorer, FlowExplorer, MetricsDashboard
from dashboards import HOOKS, metrics_table

model = saelab.load_model("stories260k", device="cpu")
texts = saelab.load_corpus("medical", split="train", max_texts=400)
stores = saelab.harvest(model, HOOKS, texts, max_tokens=2048, ctx_len=64, progress=False)
saes = {{h: saelab.train_sae(stores[h], "topk", 64, batch_size=128, seed=n, k=4, progress=False)
        for n, h in enumerate(HOOKS)}}"""

FEATURE_EXPLORER = f"""\
FeatureExplorer(saes[{EXPLORER_HOOK!r}], model, {EXPLORER_HOOK!r}, stores[{EXPLORER_HOOK!r}],
                top_k=5, progress=False)"""

METRICS_DASHBOARD = "MetricsDashboard(metrics_table())"

FLOW_EXPLORER = f"""\
codes = saes["resid_post.3"].encode(stores["resid_post.3"].acts_ND).detach()
seed = ("resid_post", 3, int((codes != 0).sum(0).argmax()))  # the most frequent feature
FlowExplorer(model, saes, stores, seed, res_cut=0.0, module_min=0.0, top_k=5,
             prompt="I think", strength={FLOW_STRENGTH}, max_new_tokens={NEW_TOKENS})"""


def write_notebook(path: Path) -> None:
    """The four cells above as a python3 notebook at `path`."""
    cells = [SETUP, FEATURE_EXPLORER, METRICS_DASHBOARD, FLOW_EXPLORER]
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in cells],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    )
    nbformat.write(nb, path)
