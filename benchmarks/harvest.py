"""Harvest throughput: `saelab.harvest` vs a plain PyTorch forward stopped at the same layer.

Both methods see the same packed token batches (`saelab.pack` over the medical train split,
batch 16 x 128 by default) on the same Hugging Face module (`model._module`):

* `raw forward`   a forward hook on the hookpoint's module stores its output and raises a
                  private exception caught outside, so no later layer (nor the LM head) runs.
                  It passes `input_ids` and an all-ones `attention_mask`, what nnsight's trace
                  hands the model for a token-id tensor.
* `nnsight trace` the loop inside `harvest` with nothing around it: one trace per batch that
                  saves the hookpoint and calls `tracer.stop()` (shows nnsight's own cost).
* `harvest`       `saelab.harvest(model, hookpoint, tokens, ...)` end to end: the traces plus
                  moving to CPU, the BOS/sink `keep_mask`, the index gathers and the final cat
                  into an `ActivationStore` (all part of the real cost). tqdm is off unless
                  `--progress`.

A warm-up batch runs first (and checks that harvest keeps exactly the raw activations). Then
every batch is run by each method in turn, the order rotating from batch to batch, `--repeats`
times over: on a shared 2-core machine other processes come and go on a scale of minutes, and
a whole-run-per-method loop ends up comparing a quiet run with a contended one. harvest is
called once per batch, so its per-call costs count once per batch (conservative: a real
harvest pays them once). The last line is `harvest_vs_raw_ratio: R`, R = the median over
batches of raw time / harvest time = harvest tokens/s / raw tokens/s (target >= 0.9).

Usage (2 CPU cores):
    python benchmarks/harvest.py                              # default: smollm2-135m,
                                                              # 8192 tokens x 3 (~2 min quiet)
    python benchmarks/harvest.py --model stories260k          # quick check (seconds)
    python benchmarks/harvest.py --tokens 32768 --repeats 3   # the full run (~6 min quiet)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

# Benchmark the checkout this script is in, whatever saelab is installed (run from anywhere).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cpu_monitor import CpuMonitor

import saelab
from saelab.interventions import read_hookpoints
from saelab.models import first_tensor, hook_module, parse_hookpoint


class _StopForward(Exception):
    """Raised by the raw method's hook once the hookpoint's output is stored."""


def raw_forward(
    hf: torch.nn.Module, module: torch.nn.Module, tokens_CT: torch.Tensor, batch_size: int
) -> list:
    """Plain forward per batch, stopped at `module` by a hook; returns the stored outputs."""
    saved: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        saved.append(first_tensor(output))
        raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for start in range(0, len(tokens_CT), batch_size):
                ids_BT = tokens_CT[start : start + batch_size]
                try:
                    hf(input_ids=ids_BT, attention_mask=torch.ones_like(ids_BT))
                except _StopForward:
                    pass
    finally:
        handle.remove()
    return saved


def trace_only(model, hookpoint, tokens_CT: torch.Tensor, batch_size: int) -> list:
    """harvest's inner trace loop alone (`interventions.read_hookpoints`: save the hookpoint,
    stop); no post-processing."""
    return [
        read_hookpoints(model, [hookpoint], tokens_CT[start : start + batch_size])[0]
        for start in range(0, len(tokens_CT), batch_size)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="saelab.load_model name (stories260k for a quick check)",
    )
    parser.add_argument(
        "--hookpoint", default="resid_post.15", help="clamped to the model's last layer"
    )
    parser.add_argument("--corpus", default="medical")
    parser.add_argument(
        "--tokens", type=int, default=8192, help="packed tokens per timed run (full: 32768)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ctx-len", type=int, default=128)
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved runs of each method (full: 5)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--progress", action="store_true", help="let harvest draw its tqdm bar (its default)"
    )
    parser.add_argument("--no-trace-row", action="store_true", help="skip the 'nnsight trace' row")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    model = saelab.load_model(args.model, device="cpu")
    load_s = time.perf_counter() - t
    hf = model._module

    kind, _, layer = args.hookpoint.partition(".")
    n_layers = len(saelab.models._blocks(hf))
    hookpoint_name = f"{kind}.{min(int(layer), n_layers - 1)}"
    hookpoint = parse_hookpoint(model, hookpoint_name)
    raw_module = hook_module(hf, hookpoint)  # the plain nn.Module (hook_module only uses getattr)

    texts = saelab.load_corpus(args.corpus, "train")
    n_ctx = -(-args.tokens // args.ctx_len)
    all_CT = saelab.pack(
        model.tokenizer, texts, args.ctx_len, (n_ctx + args.batch_size) * args.ctx_len
    )
    if len(all_CT) < n_ctx + args.batch_size:
        raise SystemExit(
            f"the corpus packs into {len(all_CT)} contexts, fewer than {n_ctx + args.batch_size}"
        )
    warm_CT, tokens_CT = (
        all_CT[: args.batch_size],
        all_CT[args.batch_size : args.batch_size + n_ctx],
    )
    n_tokens = tokens_CT.numel()

    def run_harvest(ids_CT):
        return saelab.harvest(
            model,
            hookpoint_name,
            ids_CT,
            max_tokens=ids_CT.numel(),
            ctx_len=args.ctx_len,
            batch_size=args.batch_size,
            device="cpu",
            progress=args.progress,
        )

    methods = {"raw forward": lambda ids: raw_forward(hf, raw_module, ids, args.batch_size)}
    if not args.no_trace_row:
        methods["nnsight trace"] = lambda ids: trace_only(model, hookpoint, ids, args.batch_size)
    methods["harvest"] = run_harvest

    # Warm-up (first-call allocations, nnsight's envoy setup) and a check that all agree.
    outs = {name: fn(warm_CT) for name, fn in methods.items()}
    raw0 = outs["raw forward"][0]
    store = outs["harvest"]
    keep = saelab.activations.keep_mask(raw0)
    if not torch.allclose(store.acts_ND, raw0[keep].float(), atol=1e-4, rtol=1e-4):
        raise SystemExit("harvest and the raw forward disagree on the warm-up batch")

    # Interleave at batch granularity, rotating the order, so each method's time for a batch
    # is taken within seconds of the others' (other processes on a shared 2-core machine come
    # and go on a scale of minutes); compare per-batch medians and per-batch paired ratios.
    names = list(methods)
    monitor = CpuMonitor()
    batches = [
        tokens_CT[s : s + args.batch_size] for s in range(0, len(tokens_CT), args.batch_size)
    ]
    times: dict[str, list[float]] = {name: [] for name in names}
    ratios: list[float] = []
    for rep in range(args.repeats):
        for b, ids_BT in enumerate(batches):
            shift = (rep * len(batches) + b) % len(names)
            this = {}
            for name in names[shift:] + names[:shift]:
                t = time.perf_counter()
                methods[name](ids_BT)
                this[name] = time.perf_counter() - t
                times[name].append(this[name])
            ratios.append(this["raw forward"] / this["harvest"])
    cpu_line, _ = monitor.report()

    batch_tokens = batches[0].numel()
    print(
        f"# harvest benchmark: model {args.model} (load {load_s:.1f} s), "
        f"hookpoint {hookpoint_name}, corpus {args.corpus}/train, "
        f"batches {args.batch_size}x{args.ctx_len}, {len(batches)} batches "
        f"({n_tokens} tokens) x {args.repeats} repeats, "
        "each batch timed per method in rotating order, "
        f"torch threads {torch.get_num_threads()}, tqdm {'on' if args.progress else 'off'}, "
        f"saelab from {Path(saelab.__file__).parent}"
    )
    print(cpu_line)
    print(
        "# harvest is called once per batch here, so its per-call costs "
        "(tqdm setup, StoreInfo, cat) count once per batch"
    )
    header = (
        f"{'method':<14} {'tokens':>7} {'total s':>8} {'median s/batch':>15} {'best s/batch':>13} "
        f"{'tok/s median':>13} {'tok/s best':>11}"
    )
    print(header)
    print("-" * len(header))
    for name, ts in times.items():
        med, best = statistics.median(ts), min(ts)
        print(
            f"{name:<14} {batch_tokens * len(ts):>7} {sum(ts):>8.1f} {med:>15.3f} {best:>13.3f} "
            f"{batch_tokens / med:>13.0f} {batch_tokens / best:>11.0f}"
        )
    ratio_best = min(times["raw forward"]) / min(times["harvest"])
    print(
        f"# ratio from best batches: {ratio_best:.3f}; from medians: "
        f"{statistics.median(times['raw forward']) / statistics.median(times['harvest']):.3f}; "
        f"paired per-batch ratios min/median/max: {min(ratios):.3f} / "
        f"{statistics.median(ratios):.3f} / {max(ratios):.3f}"
    )
    print(f"harvest_vs_raw_ratio: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
