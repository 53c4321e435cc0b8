"""The `saelab` command. `saelab quickstart` is the README's main job; the other
sub-commands (train, eval, compare, cache, flow, steer, report) live in `saelab.commands`.
`python -m saelab` is the same command (saelab/__main__.py), so torchrun can start it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from saelab.commands import cache as cache_command
from saelab.commands import compare as compare_command
from saelab.commands import evaluate as eval_command
from saelab.commands import flow as flow_command
from saelab.commands import report as report_command
from saelab.commands import steer as steer_command
from saelab.commands import train as train_command
from saelab.commands.config import add_config_arguments, apply_to_flags

DESCRIPTION = """Sparse autoencoders for language models: one sub-command per experiment.

Each sub-command but report takes a TOML config (configs/ holds one per README table).
A config's tables are named after the Python functions they feed ([load_model],
[load_corpus], [harvest], [train_sae], [evaluate], [compare], ...) and their keys are
those functions' argument names; quickstart, flow and steer take their flags' names
(--max-tokens -> max_tokens). --set key=value overrides one key (the value is TOML;
dotted keys name tables). `saelab <command> --help` describes each."""
EPILOG = """examples:
  saelab quickstart                                   # SmolLM2 -> JumpReLU SAE -> report
  saelab cache configs/tiny/cache.toml                # activations -> runs/cache
  saelab train configs/tiny/train.toml --set train_sae.width=256
  torchrun --nproc_per_node=2 -m saelab train configs/tiny/train.toml \\
      --set train_sae.store=runs/cache                # DDP on 2 ranks, from a cache
  saelab eval configs/tiny/eval.toml --set load_sae.folder=runs/train/sae
  saelab compare configs/hierarchical.toml            # the README's HierarchicalTopK table
  saelab flow configs/flow_run_b.toml                 # cross-layer feature flow, run B
  saelab steer configs/steer.toml --set strength=8
  saelab report runs/hierarchical                     # HTML report of its table.csv"""


def quickstart_metrics() -> list[str]:
    """The metrics `saelab quickstart` reports: the headline `SUMMARY_METRICS` and the MSE."""
    from saelab.metrics import SUMMARY_METRICS

    return [*SUMMARY_METRICS, "mse"]


def quickstart(
    out: Path,
    model_name: str,
    hookpoint: str,
    max_tokens: int,
    eval_max_tokens: int,
    width: int,
    target_l0: float,
    device: str | None,
    seed: int,
) -> dict:
    """Real model -> medical activations -> JumpReLU SAE -> held-out metrics -> report.

    Writes `metrics.json`, `history.csv` (the training log, for `saelab report`), `sae/` and
    `report.html` under `out`."""
    import pandas as pd
    import torch

    import saelab
    from saelab import figures
    from saelab.features import feature_stats
    from saelab.features.stats import encode_rows
    from saelab.io import write_table, write_text
    from saelab.sae import fires

    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    print(f"[saelab] loading {model_name}", flush=True)
    model = saelab.load_model(model_name, device=device)
    train_texts = saelab.load_corpus("medical", split="train")
    test_texts = saelab.load_corpus("medical", split="test")
    store = saelab.harvest(model, hookpoint, train_texts, max_tokens=max_tokens)
    print(f"[saelab] {store}", flush=True)
    # JumpReLU's training defaults (batch 256, lr 1e-3) are applied by train_sae.
    sae = saelab.train_sae(
        store, kind="jumprelu", width=width, target_l0=target_l0, seed=seed, device=device
    )
    sae.save(out / "sae")
    write_table(pd.DataFrame(sae.history), out / "history.csv")
    table = saelab.evaluate(sae, model, hookpoint, test_texts, max_tokens=eval_max_tokens)
    row = table.iloc[0].to_dict()
    metrics = {key: float(row[key]) for key in quickstart_metrics()}
    metrics.update(
        n_train_tokens=len(store),
        n_eval_tokens=int(row["n_tokens"]),
        model=model_name,
        hookpoint=hookpoint,
        width=width,
        target_l0=target_l0,
        minutes=round((time.time() - started) / 60, 2),
    )
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))

    test_store = saelab.harvest(
        model, hookpoint, test_texts, max_tokens=eval_max_tokens, progress=False
    )
    with torch.no_grad():
        l0_N = fires(encode_rows(sae, test_store, torch.arange(len(test_store)))).sum(1)
    density_F = feature_stats(sae, test_store, top_k=1).density_F
    report = [
        figures.metrics_table(metrics),
        figures.training_curves(sae.history),
        figures.l0_histogram(l0_N),
        figures.density_histogram(density_F),
    ]
    notes = (
        f"{model_name} {hookpoint}; JumpReLU width {width}, target L0 {target_l0}; trained "
        f"on {len(store):,} medical tokens, evaluated on {int(row['n_tokens']):,} held-out "
        "medical tokens."
    )
    figures.write_report(out / "report.html", "saelab quickstart", report, notes)
    return metrics


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `saelab` parser and the sub-parsers of the commands whose options are flags."""
    parser = argparse.ArgumentParser(
        prog="saelab",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    qs = sub.add_parser(
        "quickstart",
        help="train and evaluate a JumpReLU SAE on SmolLM2 medical activations",
        description="SmolLM2-135M resid_post.15 -> JumpReLU SAE on medical text -> held-out "
        "metrics, metrics.json and report.html (the README's first table).",
        epilog="example:\n  saelab quickstart configs/quickstart.toml --set max_tokens=50000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(qs, required=False)
    qs.add_argument(
        "--out",
        type=Path,
        default=Path("runs/quickstart"),
        help="output folder (default runs/quickstart)",
    )
    qs.add_argument(
        "--max-tokens",
        type=int,
        default=150_000,
        help="training tokens to harvest (default 150000)",
    )
    qs.add_argument(
        "--eval-max-tokens",
        type=int,
        default=8_192,
        help="held-out tokens for metrics (default 8192)",
    )
    qs.add_argument("--model", default="smollm2-135m")
    qs.add_argument("--hookpoint", default="resid_post.15")
    qs.add_argument("--width", type=int, default=4608)
    qs.add_argument("--target-l0", type=float, default=40.0)
    qs.add_argument("--seed", type=int, default=0)
    qs.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    for command in (train_command, eval_command, compare_command, cache_command):
        command.add_parser(sub)
    flow = flow_command.add_parser(sub)
    steer = steer_command.add_parser(sub)
    report_command.add_parser(sub)
    for flagged in (flow, steer):
        add_config_arguments(flagged, required=False)
    return parser, {"quickstart": qs, "flow": flow, "steer": steer}


def main(argv: list[str] | None = None) -> int:
    parser, flag_parsers = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    if args.command in flag_parsers and (args.config is not None or args.sets):
        args = apply_to_flags(parser, flag_parsers[args.command], argv, args)
    if args.command != "quickstart":
        return args.run(args)

    metrics = quickstart(
        args.out,
        args.model,
        args.hookpoint,
        args.max_tokens,
        args.eval_max_tokens,
        args.width,
        args.target_l0,
        args.device,
        args.seed,
    )
    print(json.dumps({key: metrics[key] for key in quickstart_metrics()}, indent=2))
    print(f"[saelab] metrics: {args.out / 'metrics.json'}")
    print(f"[saelab] report:  {args.out / 'report.html'}")
    print(f"[saelab] SAE:     {args.out / 'sae'}  (saelab.load_sae({str(args.out / 'sae')!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
