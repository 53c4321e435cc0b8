"""`saelab train config.toml`: harvest (or open a cache) and train one SAE.

`[train_sae]` holds `saelab.train_sae`'s arguments and the kind's options (k, target_l0,
k_set, m, n, ...). Its `store` is a cache folder (`saelab cache`); without it the command
harvests `[harvest]` on `[load_corpus]` (default split train) with `[load_model]`. Writes
`out/sae/` (`saelab.load_sae`) and `out/history.csv` (the training log, `saelab report`).

Under `torchrun --nproc_per_node=N -m saelab train config.toml` (WORLD_SIZE > 1) training
runs with DDP (`train_sae(distributed=True)`: gloo on CPU, NCCL on CUDA); every rank reads
its slice of each global batch from the cache `train_sae.store`; rank 0 writes the outputs.
"""

from __future__ import annotations

import argparse

import saelab
from saelab.commands import pipeline
from saelab.commands.common import fail
from saelab.commands.config import (
    argument_names,
    check_keys,
    kind_options,
    load_config,
    table,
)
from saelab.process_group import is_main_process, leave_process_group

#: train_sae arguments the command fills: the Python callback and a TrainConfig object.
FILLED = ("callback", "config", "distributed")
EXAMPLE = """examples:
  saelab train configs/tiny/train.toml --set train_sae.width=256 --set train_sae.k=16
  torchrun --nproc_per_node=2 -m saelab train configs/tiny/train.toml \\
      --set train_sae.store=runs/cache

  # configs/tiny/train.toml
  out = "runs/train"
  [load_model]
  name = "stories260k"
  [harvest]
  hookpoints = "resid_post.2"
  max_tokens = 4096
  [train_sae]
  kind = "topk"
  width = 128
  k = 8
"""


def add_parser(sub) -> argparse.ArgumentParser:
    return pipeline.add_config_command(
        sub,
        "train",
        "train one SAE (saelab.harvest + saelab.train_sae); DDP under torchrun",
        __doc__,
        EXAMPLE,
        run,
    )


def train_options(config: dict, device: str | None) -> dict:
    """`[train_sae]`, checked against train_sae's arguments and the kind's options."""
    from saelab.sae import sae_class

    kind = config.get("train_sae", {}).get("kind", "topk")
    with pipeline.api_errors("train"):
        if sae_class(kind).composite:
            raise ValueError(f"kind {kind!r} is built from trained parts (saelab.train_residual)")
    allowed = argument_names(saelab.train_sae, FILLED) + kind_options([kind])
    options = table("train", config, "train_sae", allowed)
    if device is not None:
        options["device"] = device
    return options


def run(args) -> int:
    config = load_config("train", args.config, args.sets)
    check_keys("train", config, ["out", "load_model", "load_corpus", "harvest", "train_sae"])
    out = pipeline.output_folder(args, config, "runs/train")
    model_device = pipeline.model_options("train", config, args.device).get("device")
    options = train_options(config, model_device)
    if pipeline.world_size() > 1:
        if "store" not in options:
            fail(
                "train",
                "under torchrun, train from a cache: write one with saelab cache "
                "and set train_sae.store (each rank reads its slice of every batch from it)",
            )
        options["distributed"] = True
    if "store" in options:
        hookpoint = config.get("harvest", {}).get("hookpoints")
        options["store"] = pipeline.open_store("train", options["store"], hookpoint)
    else:
        pipeline.harvest_options("train", config)  # key errors before the model loads
        model = pipeline.load_model("train", config, args.device)
        options["store"] = pipeline.harvest("train", config, model, "train")
        if isinstance(options["store"], dict):
            fail("train", "[harvest] hookpoints names one hookpoint for train (a string)")
    with pipeline.api_errors("train"):
        sae = saelab.train_sae(**options)
    if is_main_process():
        write_outputs(sae, out)
    leave_process_group()
    return 0


def write_outputs(sae, out) -> None:
    """out/sae and out/history.csv, and the last logged step on stdout."""
    import pandas as pd

    from saelab.io import write_table

    sae.save(out / "sae")
    write_table(pd.DataFrame(sae.history), out / "history.csv")
    last = sae.history[-1] if sae.history else {}
    summary = ", ".join(f"{k} {last[k]:.4g}" for k in ("fvu", "l0", "dead_fraction") if k in last)
    print(f"[saelab] {sae.cfg.kind} width {sae.cfg.width} at {sae.cfg.hookpoint}: {summary}")
    print(f"[saelab] SAE:     {out / 'sae'}  (saelab.load_sae({str(out / 'sae')!r}))")
    print(f"[saelab] history: {out / 'history.csv'}")
