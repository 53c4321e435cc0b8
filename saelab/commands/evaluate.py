"""`saelab eval config.toml`: held-out metrics of saved SAEs (`saelab.evaluate`).

`[load_sae]` names the SAE folder (`folder`, or a list of folders: one row each, named by
the folder) and `saelab.load_sae`'s other arguments; `[evaluate]` holds
`saelab.evaluate`'s (its `hookpoint` defaults to the one the SAE was trained at; `ks`
serves a TopK-family SAE at several k). The texts are `[load_corpus]` (default split
test). Writes `out/table.csv`, one row per SAE (and k), and prints the headline metrics.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import saelab
from saelab.commands import pipeline
from saelab.commands.common import fail
from saelab.commands.config import (
    argument_names,
    check_keys,
    load_config,
    table,
)

EXAMPLE = """example:
  saelab eval configs/tiny/eval.toml --set load_sae.folder=runs/train/sae \\
      --set 'evaluate.ks=[4, 8]'

  # configs/tiny/eval.toml
  out = "runs/eval"
  [load_model]
  name = "stories260k"
  [load_sae]
  folder = "runs/train/sae"        # or ["runs/a/sae", "runs/b/sae"]
  [evaluate]
  max_tokens = 1024
  ctx_len = 64
"""


def add_parser(sub) -> argparse.ArgumentParser:
    return pipeline.add_config_command(
        sub,
        "eval",
        "held-out metrics (FVU, L0, CE loss recovered, ...) of saved SAEs",
        __doc__,
        EXAMPLE,
        run,
    )


def load_saes(config: dict, model) -> dict:
    """{folder name: SAE} from `[load_sae]`, each checked against the model's hidden size."""
    options = table("eval", config, "load_sae", argument_names(saelab.load_sae, ("model",)))
    folders = options.pop("folder", None)
    if folders is None:
        fail("eval", '[load_sae] needs folder, e.g. folder = "runs/train/sae"')
    folders = [folders] if isinstance(folders, str) else folders
    names = [Path(f).name if Path(f).name != "sae" else Path(f).parent.name for f in folders]
    if len(set(names)) < len(names):
        names = [str(f) for f in folders]
    return {
        name: pipeline.open_sae("eval", folder, model=model, **options)
        for name, folder in zip(names, folders, strict=True)
    }


def run(args) -> int:
    from saelab.io import write_table
    from saelab.metrics import SUMMARY_METRICS

    config = load_config("eval", args.config, args.sets)
    check_keys("eval", config, ["out", "load_model", "load_sae", "load_corpus", "evaluate"])
    out = pipeline.output_folder(args, config, "runs/eval")
    allowed = argument_names(saelab.evaluate, ("saes", "model", "texts"))
    options = table("eval", config, "evaluate", allowed)
    model = pipeline.load_model("eval", config, args.device)
    saes = load_saes(config, model)
    if "hookpoint" not in options:
        trained_at = {sae.cfg.hookpoint for sae in saes.values()}
        if len(trained_at) != 1 or None in trained_at:
            fail("eval", f"set evaluate.hookpoint (the SAEs were trained at {trained_at})")
        options["hookpoint"] = trained_at.pop()
    texts = pipeline.load_texts("eval", config, "test")
    with pipeline.api_errors("eval"):
        result = saelab.evaluate(saes, model, texts=texts, **options)
    path = write_table(result, out / "table.csv")
    shown = ["sae", *(m for m in (*SUMMARY_METRICS, "n_tokens") if m in result.columns)]
    print(result[shown].to_string(index=False, float_format="%.4f"))
    print(f"[saelab] table: {path}")
    return 0
