"""The `saelab` command. `saelab quickstart` is the README's main job; `saelab flow` and
`saelab steer` (cross-layer feature flow and steering) and `saelab report` (the HTML report
of saved tables) live in `saelab.commands`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from saelab.commands import flow as flow_command
from saelab.commands import report as report_command
from saelab.commands import steer as steer_command


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="saelab", description="Sparse autoencoders for language models"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    qs = sub.add_parser(
        "quickstart", help="train and evaluate a JumpReLU SAE on SmolLM2 medical activations"
    )
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
    flow_command.add_parser(sub)
    steer_command.add_parser(sub)
    report_command.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command != "quickstart":
        return args.run(args)

    if args.command == "quickstart":
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
