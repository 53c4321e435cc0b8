"""`saelab compare config.toml`: one of the README's comparisons, chosen by `experiment`.

  experiment = "domains"       saelab.compare_domains       (domain vs broad SAEs)
  experiment = "residual"      saelab.experiments.compare_residual  (base + domain residual)
  experiment = "hierarchical"  saelab.experiments.compare_hierarchical  (one SAE, many k)
  experiment = "kron"          saelab.experiments.compare_kron  (KronSAE vs TopK)

`[compare]` holds that function's arguments (and `train_sae`'s training options, such as
batch_size, lr or a kind's option); `[load_model]` the model. Values TOML cannot hold are
written as: `base` (residual) an SAE folder, `store` a cache folder (`saelab cache`),
`head_shapes` (kron) "default" for the kind's own heads. Writes `out/table.csv` and each
SAE under `out/` (the function's `out=`).
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

EXPERIMENTS = {
    "domains": ("saelab.experiments.domains", "compare_domains"),
    "residual": ("saelab.experiments.residual", "compare_residual"),
    "hierarchical": ("saelab.experiments.sparsity", "compare_hierarchical"),
    "kron": ("saelab.experiments.sparsity", "compare_kron"),
}
#: train_sae arguments an experiment sets itself or that one run of several cannot share
#: (a checkpoint folder); the rest pass through **train_options.
TRAIN_FILLED = ("store", "kind", "width", "seed", "max_tokens", "callback", "config", "device")
TRAIN_FILLED += ("dtype", "progress", "distributed", "checkpoint_dir", "checkpoint_every")
#: Kind options each experiment sets per SAE from its own arguments (k from ks, ...).
KIND_FILLED = {
    "compare_domains": ("target_l0", "k"),
    "compare_residual": ("target_l0", "k"),
    "compare_hierarchical": ("k", "k_set"),
    "compare_kron": ("m", "n"),
}
EXAMPLE = """example:
  saelab compare configs/hierarchical.toml --set compare.max_tokens=50000
  saelab compare configs/tiny/compare_hierarchical.toml --out runs/hier-tiny

  # configs/hierarchical.toml (README, "HierarchicalTopK")
  experiment = "hierarchical"
  out = "runs/hierarchical"
  [load_model]
  name = "smollm2-135m"
  [compare]
  hookpoint = "resid_post.15"
  trained_on = "medical"
  width = 4608
  ks = [8, 16, 32, 64]
  k_sets = ["all", "geometric"]
  max_tokens = 200_000
  eval_max_tokens = 8192
"""


def add_parser(sub) -> argparse.ArgumentParser:
    return pipeline.add_config_command(
        sub,
        "compare",
        "a README comparison: domains, residual, hierarchical or kron",
        __doc__,
        EXAMPLE,
        run,
    )


def experiment_function(config: dict):
    """The compare_* function `experiment` names."""
    import importlib

    name = config.get("experiment")
    if name not in EXPERIMENTS:
        fail("compare", f"experiment = {name!r}: write one of {', '.join(EXPERIMENTS)}")
    module, function = EXPERIMENTS[name]
    return getattr(importlib.import_module(module), function)


def allowed_keys(function) -> list[str]:
    """`[compare]`'s keys: the function's arguments, then train_sae's training options and
    the SAE kinds' options (its `**train_options`)."""
    allowed = argument_names(function, ("model", "out"))
    allowed += [a for a in argument_names(saelab.train_sae, TRAIN_FILLED) if a not in allowed]
    filled = KIND_FILLED[function.__name__]
    return allowed + [a for a in kind_options() if a not in allowed and a not in filled]


def compare_options(config: dict, function) -> dict:
    """`[compare]` checked against `allowed_keys`, with paths opened and "default" head
    shapes as None."""
    options = table("compare", config, "compare", allowed_keys(function))
    if "hookpoint" not in options:
        fail("compare", '[compare] needs hookpoint, e.g. hookpoint = "resid_post.15"')
    if "store" in options:
        options["store"] = pipeline.open_store("compare", options["store"], options["hookpoint"])
    if "base" in options:
        options["base"] = pipeline.open_sae("compare", options["base"])
    elif function.__name__ == "compare_residual":
        fail("compare", '[compare] needs base, the frozen SAE folder (base = "runs/.../sae")')
    if "head_shapes" in options:
        options["head_shapes"] = [
            None if shape == "default" else tuple(shape) for shape in options["head_shapes"]
        ]
    return options


def run(args) -> int:
    from saelab.experiments.common import summary_metrics

    config = load_config("compare", args.config, args.sets)
    check_keys("compare", config, ["experiment", "out", "load_model", "compare"])
    function = experiment_function(config)
    out = pipeline.output_folder(args, config, f"runs/{config['experiment']}")
    options = compare_options(config, function)
    model = pipeline.load_model("compare", config, args.device)
    if args.device is not None:
        options["device"] = args.device
    with pipeline.api_errors("compare"):
        result = function(model, out=out, **options)
    shown = [c for c in ("evaluated_on", "sae", "k") if c in result.columns]
    print(result[shown + summary_metrics(result)].to_string(index=False, float_format="%.4f"))
    print(f"[saelab] table: {out / 'table.csv'}")
    return 0
