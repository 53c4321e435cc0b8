"""`saelab cache config.toml`: harvest activations into a cache folder (safetensors shards
and one manifest.json) that `saelab train` and the experiments read back memory-mapped.

The config's `[load_model]`, `[load_corpus]` (default split train) and `[harvest]` tables
are `saelab.load_model`, `saelab.load_corpus` and `saelab.harvest`'s arguments; `out` is
the cache folder (harvest's `cache=`). Under torchrun each rank harvests its share of the
contexts into the same cache (`harvest(distributed=True)`).
"""

from __future__ import annotations

import argparse

from saelab.commands import pipeline
from saelab.commands.common import fail
from saelab.commands.config import check_keys, load_config
from saelab.process_group import is_main_process, leave_process_group

EXAMPLE = """example:
  saelab cache configs/tiny/cache.toml --set harvest.max_tokens=4096 --out runs/cache

  # configs/tiny/cache.toml
  out = "runs/cache"
  [load_model]
  name = "stories260k"
  [load_corpus]
  name = "medical"
  [harvest]
  hookpoints = "resid_post.2"     # or a list: one sub-folder per hookpoint
  max_tokens = 2048
  dtype = "float16"               # float32 (default), float16 or bfloat16
"""


def add_parser(sub) -> argparse.ArgumentParser:
    return pipeline.add_config_command(
        sub,
        "cache",
        "harvest activations into a cache folder (saelab.harvest(cache=...))",
        __doc__,
        EXAMPLE,
        run,
    )


def run(args) -> int:
    config = load_config("cache", args.config, args.sets)
    check_keys("cache", config, ["out", "load_model", "load_corpus", "harvest"])
    out = pipeline.output_folder(args, config, "runs/cache")
    pipeline.harvest_options("cache", config, ("cache",))  # key errors before the model loads
    extra = {"cache": out, "distributed": pipeline.world_size() > 1}
    if "distributed" in config.get("harvest", {}):
        fail("cache", "[harvest] distributed is set by torchrun's WORLD_SIZE, not the config")
    model = pipeline.load_model("cache", config, args.device)
    stores = pipeline.harvest("cache", config, model, "train", **extra)
    if is_main_process():
        for name, store in (stores if isinstance(stores, dict) else {"": stores}).items():
            print(f"[saelab] {name + ': ' if name else ''}{store}")
        print(f"[saelab] cache: {out}")
    leave_process_group()
    return 0
