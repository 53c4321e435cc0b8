"""GPU throughput: harvest tokens/s, SAE train-step tokens/s per kind and width, and MFU.

On a CUDA device it prints one table:

* `harvest`   `saelab.harvest` of `--harvest-tokens` packed medical tokens at `--hookpoint`
              (SmolLM2-135M by default, `--model stories260k` for a quick one), once with the
              default bf16 autocast of the forwards and once in float32. FLOPs: 2 x the
              parameters of the blocks up to the hookpoint per token (attention scores and
              the LM head, which never runs, left out). On the CPU smoke run the bf16 row is
              CPU autocast, to exercise the path.
* `train`     `saelab.train_sae` itself (batch gather, host-to-device copy, loss, backward,
              Adam, decoder renorm, logging) on an in-memory Gaussian store of width
              `--d-in`, for topk / jumprelu / batchtopk / kron at each `--widths`, float32
              SAE (the SAE loss and metrics stay float32). Timed between the callback after
              the warm-up steps and the one after the last step. FLOPs per step: forward
              = encoder 2*B*d*F (kron: 2*B*h(m+n)*d, `encoder_multiply_adds`) + decoder
              2*B*k*d for kinds that gather k rows (topk, batchtopk, kron with the sparse
              decoder) else 2*B*F*d; forward + backward = 3 x forward
              (`quality.train_flops_per_token`).

MFU = achieved FLOP/s / peak FLOP/s. The peak is the device's dense bf16 tensor-core figure
from `PEAK_BF16_TFLOPS` (matched by name: H100/H200 989, A100 312, ...), or `--peak-tflops`.
A float32 train step is scored against the bf16 peak too, so its MFU shows the headroom;
`--tf32` lets its matmuls use TF32 tensor cores (`torch.backends.cuda.matmul.allow_tf32`).

Without CUDA it prints "no CUDA device: nothing to measure" and exits 0. `--cpu` runs the same
code path on the CPU at tiny sizes (stories260K, two small widths, a few steps) as a smoke
test; MFU is "-" there unless `--peak-tflops` is given.

`--autocast-check` instead measures what bf16 autocast does to `saelab.evaluate`: SAEs trained
on `--model` (stories260K by default) at a few hookpoints, evaluated on held-out medical text
with `autocast=False` and `autocast=True` (CPU autocast with `--cpu`), and the largest
absolute difference of each metric printed (README "Running on a GPU" quotes it).

Usage:
    python benchmarks/gpu.py                                # on a GPU node: the full table
    python benchmarks/gpu.py --cpu --autocast-check         # bf16 vs float32 metrics (~1 min)
    python benchmarks/gpu.py --tf32                         # float32 SAEs on TF32 tensor cores
    python benchmarks/gpu.py --model stories260k --widths 4608
    python benchmarks/gpu.py --cpu                          # CPU smoke test (~30 s)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's saelab

from quality import train_flops_per_token  # after the path line: it imports saelab

import saelab
from saelab.activations import ActivationStore
from saelab.models import _blocks, d_model, hf_module, parse_hookpoint

KINDS = ("topk", "jumprelu", "batchtopk", "kron")
GPU_WIDTHS = (4608, 18432, 65536)
CPU_WIDTHS = (256, 1024)
# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by a substring of the device name; the
# first match wins, so the more specific names come first.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A10G": 70.0,
    "L40S": 362.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "V100": 125.0,  # fp16: V100 has no bf16
    "T4": 65.0,  # fp16
}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    """`override`, else the table's figure for this CUDA device's name; None if unknown."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(kind, width, d_in, batch, steps, warmup, device) -> tuple[float, float]:
    """(tokens/s, FLOPs per step) of `train_sae` for `kind` at `width`."""
    n = batch * (steps + warmup)
    x_ND = torch.randn(n, d_in, generator=torch.Generator().manual_seed(0))
    store = ActivationStore.from_tensor(x_ND, hookpoint="resid_post.0", model="gaussian")
    options = {"k": 32} if kind != "jumprelu" else {"target_l0": 32}
    marks = {}

    def callback(log: dict) -> None:
        if log["step"] in (warmup - 1, steps + warmup - 1):
            sync(device)
            marks[log["step"]] = time.perf_counter()

    sae = saelab.train_sae(
        store,
        kind=kind,
        width=width,
        batch_size=batch,
        device=device,
        progress=False,
        log_every=1,
        callback=callback,
        **options,
    )
    seconds = marks[steps + warmup - 1] - marks[warmup - 1]
    return steps * batch / seconds, batch * train_flops_per_token(sae)


def forward_params(model, hookpoint: str) -> int:
    """Parameters of the blocks up to and including the hookpoint's layer."""
    layer = parse_hookpoint(model, hookpoint).layer
    blocks = _blocks(hf_module(model))
    return sum(p.numel() for block in list(blocks)[: layer + 1] for p in block.parameters())


def harvest_rate(model, hookpoint, tokens_CT, batch, autocast, device) -> float:
    """Tokens/s of `saelab.harvest` over `tokens_CT` (after one warm-up batch)."""
    from saelab.interventions import autocast_forwards

    with autocast_forwards(autocast):
        saelab.harvest(model, hookpoint, tokens_CT[:batch], batch_size=batch, progress=False)
        sync(device)
        start = time.perf_counter()
        saelab.harvest(model, hookpoint, tokens_CT, batch_size=batch, progress=False)
        sync(device)
    return tokens_CT.numel() / (time.perf_counter() - start)


def row(what, setting, rate, flops_per_token, peak) -> dict:
    achieved = rate * flops_per_token
    mfu = f"{achieved / (peak * 1e12):.1%}" if peak else "-"
    return {
        "what": what,
        "setting": setting,
        "tokens/s": f"{rate:,.0f}",
        "TFLOP/s": f"{achieved / 1e12:.3f}",
        "MFU": mfu,
    }


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))


CHECK_METRICS = ("mse", "fvu", "l0", "ce_clean", "ce_sae", "ce_loss_recovered", "delta_ce", "kl")


def autocast_check(model_name: str, device: torch.device, n_tokens: int) -> None:
    """Largest |bf16-autocast metric - float32 metric| over SAEs at a few hookpoints."""
    from saelab.metrics import evaluate

    model = saelab.load_model(model_name, device=device)
    n_blocks = len(_blocks(hf_module(model)))
    hookpoints = [f"resid_post.{n_blocks // 2}", f"mlp_out.{n_blocks // 2}", "resid_post.1"]
    train = saelab.load_corpus("medical", split="train")
    stores = saelab.harvest(model, hookpoints, train, max_tokens=4 * n_tokens, progress=False)
    test = saelab.pack(model.tokenizer, saelab.load_corpus("medical", split="test"), 128, n_tokens)
    worst = dict.fromkeys(CHECK_METRICS, 0.0)
    for hp in hookpoints:
        for kind, options in (("topk", {"k": 16}), ("jumprelu", {"target_l0": 16})):
            sae = saelab.train_sae(
                stores[hp],
                kind,
                width=8 * d_model(model),
                progress=False,
                max_tokens=20 * n_tokens,
                **options,
            )
            runs = [
                evaluate(sae, model, hp, test, progress=False, autocast=a) for a in (False, True)
            ]
            exact, bf16 = (r.iloc[0] for r in runs)
            line = ", ".join(f"{m} {exact[m]:.4f}/{bf16[m]:.4f}" for m in CHECK_METRICS)
            print(f"{hp} {kind}: float32/bf16 {line}")
            for m in CHECK_METRICS:
                worst[m] = max(worst[m], abs(float(bf16[m]) - float(exact[m])))
    print("largest |bf16 - float32|: " + ", ".join(f"{m} {v:.2g}" for m, v in worst.items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="smoke test on the CPU, tiny sizes")
    parser.add_argument("--model", default=None, help="smollm2-135m (GPU default), stories260k")
    parser.add_argument("--hookpoint", default=None, help="default: resid_post of the mid layer")
    parser.add_argument("--harvest-tokens", type=int, default=None)
    parser.add_argument("--harvest-batch", type=int, default=None)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS))
    parser.add_argument("--widths", nargs="+", type=int, default=None)
    parser.add_argument("--d-in", type=int, default=None, help="default: the model's width")
    parser.add_argument("--batch", type=int, default=None, help="train batch (tokens)")
    parser.add_argument("--steps", type=int, default=None, help="timed train steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the peak")
    parser.add_argument("--tf32", action="store_true", help="TF32 matmuls for the train steps")
    parser.add_argument("--autocast-check", action="store_true", help="bf16 vs float32 metrics")
    args = parser.parse_args(argv)

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    gpu = not args.cpu
    device = torch.device("cuda" if gpu else "cpu")
    model_name = args.model or ("smollm2-135m" if gpu else "stories260k")
    widths = args.widths or (GPU_WIDTHS if gpu else CPU_WIDTHS)
    batch = args.batch or (4096 if gpu else 64)
    steps = args.steps or (20 if gpu else 3)
    n_harvest = args.harvest_tokens or (65_536 if gpu else 1024)
    harvest_batch = args.harvest_batch or (64 if gpu else 8)
    if args.autocast_check:
        autocast_check(args.model or "stories260k", device, args.harvest_tokens or 4096)
        return 0
    peak = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    print(f"device: {name}; peak {peak or '?'} TFLOP/s (dense bf16); torch {torch.__version__}")

    model = saelab.load_model(model_name, device=device)
    n_blocks = len(_blocks(hf_module(model)))
    hookpoint = args.hookpoint or f"resid_post.{n_blocks // 2}"
    d_in = args.d_in or d_model(model)
    texts = saelab.load_corpus("medical", split="train")
    tokens_CT = saelab.pack(model.tokenizer, texts, ctx_len=128, max_tokens=n_harvest)
    flops_per_token = 2.0 * forward_params(model, hookpoint)
    rows = []
    for autocast, label in ((True, "bf16 autocast"), (False, "float32")):
        rate = harvest_rate(model, hookpoint, tokens_CT, harvest_batch, autocast, device)
        setting = f"{model_name} {hookpoint} {label} batch {harvest_batch}x128"
        rows.append(row("harvest", setting, rate, flops_per_token, peak))
    del model
    torch.backends.cuda.matmul.allow_tf32 = args.tf32  # float32 SAEs: TF32 tensor cores or not
    precision = "float32 (TF32 matmuls)" if args.tf32 else "float32"
    for kind in args.kinds:
        for width in widths:
            rate, flops = train_rate(kind, width, d_in, batch, steps, args.warmup, device)
            setting = f"{kind} F={width} d={d_in} B={batch} {precision}"
            rows.append(row("train", setting, rate, flops / batch, peak))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
