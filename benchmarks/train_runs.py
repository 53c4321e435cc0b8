"""One line of held-out quality per training run, each run a JSON spec (issue 14's sweeps).

Trains on the SmolLM2-135M `resid_post.15` medical cache of `benchmarks/jumprelu_quality.py
--real` (148,800 training tokens, 65,013 held-out) and prints, per spec, the spec with the
held-out EV, L0, dead fraction, training TFLOPs (`quality.train_flops_per_token`) and wall
seconds; with `ks` in the spec, the FVU at each k instead (HierarchicalTopK,
or a TopK per k). Spec keys: `kind`, `width`, `lr_mult` (× the sparsify rate
`2e-4/√(F/16384)`; without it the kind's default), and any `train_sae` argument.

    python benchmarks/train_runs.py '{"kind": "topk", "width": 4608, "k": 32, "lr_mult": 8}'
    python benchmarks/train_runs.py '{"kind": "kron", "width": 18432, "k": 32, "lr_mult": 8}'
    python benchmarks/train_runs.py '{"kind": "hierarchical_topk", "width": 4608, "k": 64,
        "k_set": "geometric", "lr": 0.0015, "ks": [8, 16, 32, 64]}'
    python benchmarks/train_runs.py '{"kind": "topk", "width": 4608, "lr": 0.0015,
        "ks": [8, 16, 32, 64]}'
    python benchmarks/train_runs.py --rates '{"kind": "topk", "width": 4608, "k": 32}' \
        '{"kind": "kron", "width": 4608, "k": 32}'     # training tokens/s, interleaved
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from quality import held_out, train_flops_per_token

from saelab.activations import ActivationStore
from saelab.sae import sae_class
from saelab.train import train_sae

CACHE = Path.home() / ".cache/saelab/jumprelu_quality"


def fvu_at(sae, x_ND: torch.Tensor, k: int) -> float:
    err = 0.0
    with torch.no_grad():
        for start in range(0, len(x_ND), 4096):
            x = x_ND[start : start + 4096]
            err += (sae(x, k=k).x_hat - x).pow(2).sum().item()
    return err / (x_ND - x_ND.mean(0)).pow(2).sum().item()


def run(spec: dict, store, x_ND) -> dict:
    kw = dict(spec)
    kind, width, ks = kw.pop("kind"), kw.pop("width"), kw.pop("ks", None)
    if "lr_mult" in kw:
        kw["lr"] = kw.pop("lr_mult") * 2e-4 / math.sqrt(width / 16384)
    started = time.time()
    if ks is not None and kind == "topk":  # one TopK per k
        fvu = {k: fvu_at(train_sae(store, kind, width=width, progress=False, **{**kw, "k": k}),
                         x_ND, k) for k in ks}  # fmt: skip
        return {**spec, "fvu": fvu, "wall_s": round(time.time() - started, 1)}
    sae = train_sae(store, kind, width=width, progress=False, **kw)
    wall = time.time() - started
    if ks is not None:
        return {**spec, "fvu": {k: round(fvu_at(sae, x_ND, k), 4) for k in ks}}
    row = held_out(sae, x_ND)
    tokens = sae.cfg.training["n_steps"] * sae.cfg.training["batch_size"]
    return {
        **spec,
        **{name: round(value, 4) for name, value in row.items()},
        "tflops": round(train_flops_per_token(sae) * tokens / 1e12, 3),
        "wall_s": round(wall, 1),
    }


def rates(specs: list[dict], store, rounds: int = 3, steps: tuple[int, int] = (10, 50)) -> None:
    """Training tokens/s of each spec (its kind, width and options; `max_tokens` and `ks`
    ignored): the time of a `steps[1]`-step run minus that of a `steps[0]`-step one, so the
    setup (input scale, init) drops out; the specs interleaved over `rounds` rounds so that
    load on a shared machine falls on all of them alike; the median round is printed."""
    per_token: dict[int, list[float]] = {i: [] for i in range(len(specs))}
    for _ in range(rounds):
        for i, spec in enumerate(specs):
            kw = {k: v for k, v in spec.items() if k not in ("max_tokens", "ks", "lr_mult")}
            kind, width = kw.pop("kind"), kw.pop("width")
            batch = kw.get("batch_size") or sae_class(kind).training_defaults.get("batch_size", 512)
            took = []
            for n_steps in steps:
                started = time.perf_counter()
                tokens = n_steps * batch
                train_sae(store, kind, width=width, max_tokens=tokens, progress=False, **kw)
                took.append(time.perf_counter() - started)
            per_token[i].append((took[1] - took[0]) / ((steps[1] - steps[0]) * batch))
    for i, spec in enumerate(specs):
        print(json.dumps({**spec, "tokens_per_s": round(1 / statistics.median(per_token[i]))}))


def main() -> None:
    args = sys.argv[1:]
    if not args or not (CACHE / "train_150000" / "manifest.json").exists():
        sys.exit(__doc__ + "\nrun `python benchmarks/jumprelu_quality.py --real` first (the cache)")
    torch.set_num_threads(1)
    store = ActivationStore.load(CACHE / "train_150000")
    if args[0] == "--rates":
        return rates([json.loads(spec) for spec in args[1:]], store)
    test = ActivationStore.load(CACHE / "test_65536")
    x_ND = test.get(torch.arange(len(test)))
    for spec in args:
        print(json.dumps(run(json.loads(spec), store, x_ND)), flush=True)


if __name__ == "__main__":
    main()
