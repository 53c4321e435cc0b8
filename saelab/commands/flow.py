"""`saelab flow`: cross-layer feature flow over a span of blocks, end to end.

docs/methods.md, "Cross-layer feature flow", steps 1-5: one SAE per hookpoint of the blocks
(trained on the corpus's train split from one aligned harvest, or loaded with `--saes`),
then on held-out text (the test split, one aligned harvest of every hookpoint) the
predecessor groups of each layer beside the shuffled-decoder null, and deactivation of the
predecessors chosen by each method at `--deactivation-layers`. Writes `groups.csv`,
`deactivation.csv`, `saes/` (unless loaded) and `report.html`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from saelab.commands.common import (
    Phases,
    add_shared_arguments,
    arg_type,
    check_layers,
    fail,
    fit_model,
    harvest_split,
    load_saes,
    parse_layers,
)


def parse_deactivation_layers(spec: str) -> list[int]:
    """A layer spec, or "none" to skip deactivation."""
    return [] if spec.strip().lower() == "none" else parse_layers(spec)


FLOW_EXAMPLE = """example:
  saelab flow configs/flow_run_b.toml --set eval_max_tokens=4096
  saelab flow --model stories260k --layers 1-2 --width 32 --k 2 --max-tokens 2048

A config's keys are the flags' names (--max-tokens -> max_tokens, --float16-cache ->
float16_cache = true; layers = "8-16" or [8, 9, 10]); a flag given on the command line
wins over the config."""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "flow",
        help="layer SAEs, predecessor groups and deactivation over a span of blocks",
        description=__doc__.split("\n\n")[1],
        epilog=FLOW_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--layers",
        type=arg_type(parse_layers),
        default=None,
        help="target blocks, e.g. 8-16 or 8,12 (default with --saes: every layer they cover)",
    )
    p.add_argument("--kind", default="topk", help="SAE kind (default topk)")
    p.add_argument("--width", type=int, default=4608, help="SAE latents (default 4608)")
    sparsity = p.add_mutually_exclusive_group()
    sparsity.add_argument("--k", type=int, default=None, help="TopK sparsity (default 32)")
    sparsity.add_argument("--target-l0", type=float, default=None, help="L0 for any kind")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (kind default)")
    p.add_argument(
        "--max-tokens", type=int, default=200_000, help="training tokens (default 200000)"
    )
    p.add_argument(
        "--deactivation-layers",
        type=arg_type(parse_deactivation_layers),
        default=None,
        help="layers to run deactivation at, or none (default: the middle of --layers)",
    )
    p.add_argument("--cases", type=int, default=128, help="deactivation cases per layer")
    p.add_argument("--methods", default=None, help="comma-separated deactivation methods")
    p.add_argument(
        "--float16-cache", action="store_true", help="hold the training harvest in float16"
    )
    p.add_argument("--cache", type=Path, default=None, help="write the training harvest here")
    p.add_argument("--saes", type=Path, default=None, help="load these layer SAEs instead")
    p.add_argument(
        "--no-exact", action="store_true", help="skip the exact split (non-affine encoders)"
    )
    p.add_argument("--out", type=Path, default=Path("runs/flow"), help="default runs/flow")
    add_shared_arguments(p)
    p.set_defaults(run=run)
    return p


def training_options(args) -> dict:
    """The kind's sparsity option (`--k`, else `--target-l0`, else L0 32 when the kind has
    one), the batch size and the seed, for `train_layer_saes`."""
    from saelab.sae import sae_class

    try:
        cls = sae_class(args.kind)
    except ValueError as err:
        fail("flow", str(err))
    options = {"seed": args.seed_value, "batch_size": args.batch_size}
    if args.k is not None:
        options["k"] = args.k
    elif args.target_l0 is not None or cls.sparsity_field is not None:
        target_l0 = 32 if args.target_l0 is None else args.target_l0
        try:
            options.update(cls.sparsity_option(target_l0))
        except ValueError as err:
            fail("flow", str(err))
    return options


def plan_layers(args, saes: dict | None) -> tuple[list[int], list[int], tuple[str, ...]]:
    """(flow layers, deactivation layers, methods), checked against each other and `saes`."""
    from saelab.flow import METHODS, flow_layers, layer_hookpoints

    layers = args.layers
    if layers is None:
        if saes is None:
            fail("flow", "--layers is needed (e.g. --layers 8-16) unless --saes gives the SAEs")
        layers = flow_layers(saes)
        if not layers:
            fail("flow", f"--saes {args.saes} holds no complete block (resid_post.L-1, ...)")
    if saes is not None:
        missing = [name for name in layer_hookpoints(layers) if name not in saes]
        if missing:
            fail("flow", f"--saes {args.saes} lacks {', '.join(missing)} for --layers {layers}")
    deact = args.deactivation_layers
    deact = [layers[len(layers) // 2]] if deact is None else deact
    outside = sorted(set(deact) - set(layers))
    if outside:
        fail("flow", f"--deactivation-layers {outside} are not among --layers {layers}")
    methods = METHODS if args.methods is None else tuple(args.methods.split(","))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        fail("flow", f"unknown --methods {unknown}; known: {', '.join(METHODS)}")
    return layers, deact, methods


def layer_groups(saes: dict, layers: list[int], stores: dict, args) -> tuple[list, list]:
    """(observed, null) `PredecessorGroups` per layer, one `match` per layer for both."""
    from saelab import flow

    observed, null = [], []
    for layer in layers:
        flow_match = flow.match(saes, layer)
        for is_null, results in ((False, observed), (True, null)):
            try:
                groups = flow.predecessor_groups(
                    saes,
                    layer,
                    stores,
                    flow_match=flow_match,
                    null=is_null,
                    seed=args.seed_value,
                    exact=not args.no_exact,
                )
            except ValueError as err:
                fail("flow", f"{err} (the command's flag: --no-exact)")
            results.append(groups)
    return observed, null


def run_deactivation(model, saes: dict, layer: int, texts, methods, args):
    """`saelab.flow.deactivation` at one layer on the held-out texts (a stop when nothing fires)."""
    from saelab import flow

    try:
        return flow.deactivation(
            model,
            saes,
            layer,
            texts,
            max_tokens=args.eval_max_tokens,
            ctx_len=args.ctx_len,
            n_cases=args.cases,
            methods=methods,
            seed=args.seed_value,
        )
    except ValueError as err:
        fail("flow", f"deactivation at layer {layer}: {err}")


def run(args) -> int:
    """Train or load, harvest held-out text, groups and deactivation, then write and print."""
    import torch

    import saelab
    from saelab import flow
    from saelab.commands.flow_output import print_summary, write_outputs
    from saelab.models import model_device

    args.out.mkdir(parents=True, exist_ok=True)
    saes = None if args.saes is None else load_saes("flow", args.saes)
    layers, deact_layers, methods = plan_layers(args, saes)
    options = None if saes is not None else training_options(args)
    names = flow.layer_hookpoints(layers)
    phases = Phases()
    with phases("load model"):
        model = saelab.load_model(args.model, device=args.device)
    check_layers("flow", layers, model)
    if saes is None:
        with phases(f"harvest {args.max_tokens:,} train tokens at {len(names)} hookpoints"):
            cache_dtype = torch.float16 if args.float16_cache else torch.float32
            train_stores = harvest_split(
                model, names, args, "train", args.max_tokens, cache=args.cache, dtype=cache_dtype
            )
        with phases(f"train {len(names)} {args.kind} SAEs of width {args.width}"):
            saes = flow.train_layer_saes(
                model,
                layers,
                stores=train_stores,
                kind=args.kind,
                width=args.width,
                device=args.device,
                **options,
            )
            flow.save_layer_saes(saes, args.out / "saes")  # kept even if a later phase fails
        del train_stores
        saes = {name: sae.to(model_device(model)) for name, sae in saes.items()}
    else:
        saes = fit_model("flow", saes, model, args.saes)
    test_texts = saelab.load_corpus(args.corpus, split="test")
    with phases(f"harvest {args.eval_max_tokens:,} held-out tokens"):
        stores = harvest_split(model, names, args, "test", args.eval_max_tokens, progress=False)
    with phases(f"predecessor groups and null at layers {layers}"):
        observed, null = layer_groups(saes, layers, stores, args)
    deactivation = {}
    with phases(f"deactivation at layers {deact_layers}"):
        for layer in deact_layers:
            deactivation[layer] = run_deactivation(model, saes, layer, test_texts, methods, args)
    with phases("write outputs and report"):
        paths = write_outputs(args, model, saes, stores, observed, null, deactivation)
    print_summary(observed, null, deactivation, phases, paths)
    return 0
