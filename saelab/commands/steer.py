"""`saelab steer`: steer generation along the flow graph of one seed feature.

docs/methods.md, "Cross-layer feature flow", steps 4 and 6: the flow graph of `--seed`
(a resid_post feature of the `--saes` folder `saelab flow` wrote) gives a promotion plan
(`saelab.steer.from_graph`, `--schedule`, `--layer`, `--strength` in units of each
feature's typical code, measured on a small held-out harvest of the plan's hookpoints);
the unsteered and steered continuations of `--prompt` are printed one above the other.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from saelab.commands.common import (
    Phases,
    add_shared_arguments,
    arg_type,
    fail,
    fit_model,
    harvest_split,
    load_saes,
    parse_seed,
)

STEER_EXAMPLE = """example:
  saelab steer configs/steer.toml --set strength=8 --set 'prompt="The patient"'
  saelab steer --saes runs/flow_b/saes --seed resid_post.12:1234 --schedule single --layer 12

A config's keys are the flags' names (--max-new-tokens -> max_new_tokens,
seed = "resid_post.12:1234"); a flag given on the command line wins over the config."""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "steer",
        help="steered against unsteered text along a seed feature's flow graph",
        description=__doc__.split("\n\n")[1],
        epilog=STEER_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--saes", type=Path, default=None, help="a folder saelab flow wrote (needed)")
    p.add_argument(
        "--seed",
        type=arg_type(parse_seed),
        default=None,
        help="the seed feature, hookpoint:feature (e.g. resid_post.12:1234)",
    )
    p.add_argument(
        "--schedule",
        default="cumulative",
        help="single, cumulative, exponential or linear (default cumulative)",
    )
    p.add_argument("--layer", type=int, default=None, help="the layer to steer (single) or up to")
    p.add_argument("--strength", type=float, default=4.0, help="times the typical code")
    p.add_argument("--prompt", default="I think")
    p.add_argument("--max-new-tokens", type=int, default=36)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.27, help="with --sample (paper 1.27)")
    p.add_argument("--top-p", type=float, default=0.7, help="with --sample (paper 0.7)")
    p.add_argument("--res-cut", type=float, default=0.5, help="residual-chain cosine cut")
    p.add_argument("--module-min", type=float, default=0.15, help="MLP/attention edge cut")
    add_shared_arguments(p)
    p.set_defaults(run=run)
    return p


def check_seed(saes: dict, seed: tuple[str, int, int], folder: Path) -> None:
    """Stop unless the seed's hookpoint has an SAE in `saes` and the feature is inside it."""
    site, layer, feature = seed
    hookpoint = f"{site}.{layer}"
    if hookpoint not in saes:
        have = ", ".join(name for name in saes if name.startswith(f"{site}."))
        fail("steer", f"--seed: no SAE at {hookpoint} in {folder} (it has {have or 'none'})")
    width = saes[hookpoint].cfg.width
    if not 0 <= feature < width:
        fail("steer", f"--seed: feature {feature} is outside the {hookpoint} SAE (width {width})")


def graph_text(graph) -> str:
    """One line: the node count per hookpoint in depth order."""
    counts = Counter(attrs["hookpoint"] for _, attrs in graph.nodes(data=True))
    order = sorted(counts, key=lambda h: (int(h.rsplit(".", 1)[1]), h))
    parts = ", ".join(f"{h} {counts[h]}" for h in order)
    return f"{graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges ({parts})"


def run(args) -> int:
    """Graph, plan with typical codes, then the two continuations."""
    import saelab
    from saelab import flow, steer
    from saelab.steer import from_graph, typical_activation
    from saelab.steer import generate as steered_text  # the traced decode loop

    for flag, value in (("--saes", args.saes), ("--seed", args.seed)):
        if value is None:
            fail("steer", f"{flag} is needed (as a flag or a config key {flag[2:]} = ...)")
    saes = load_saes("steer", args.saes)
    check_seed(saes, args.seed, args.saes)
    if args.schedule not in steer.SCHEDULES:
        fail("steer", f"unknown --schedule {args.schedule!r}; known: {steer.SCHEDULES}")
    if args.schedule == "single" and args.layer is None:
        fail("steer", "--schedule single needs --layer (the layer whose nodes are steered)")
    phases = Phases()
    with phases("load model"):
        model = saelab.load_model(args.model, device=args.device)
    saes = fit_model("steer", saes, model, args.saes)
    with phases("flow graph"):
        graph = flow.flow_graph(saes, args.seed, res_cut=args.res_cut, module_min=args.module_min)
    print(f"[saelab] graph of {args.seed[0]}.{args.seed[1]}:{args.seed[2]}: {graph_text(graph)}")
    try:  # the plan's hookpoints first (units of 1), so only those are harvested
        hookpoints = sorted(
            {t.hookpoint for t in from_graph(graph, saes, args.strength, args.schedule, args.layer)}
        )
    except ValueError as err:
        fail("steer", str(err))
    with phases(f"typical codes on {args.eval_max_tokens:,} held-out tokens"):
        stores = harvest_split(
            model, hookpoints, args, "test", args.eval_max_tokens, progress=False
        )
        typical = {h: typical_activation(saes[h], stores[h]) for h in hookpoints}
    plan = from_graph(graph, saes, args.strength, args.schedule, args.layer, typical)
    print(f"[saelab] plan: {len(plan)} terms ({args.schedule}, strength {args.strength:g})")
    for term in plan:
        label = saes[term.hookpoint].latent_label(term.feature)
        print(f"  {term.hookpoint:<14} {label:<28} coefficient {term.coefficient:.4g}")
    options = dict(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed_value,
    )
    with phases("generate"):
        unsteered = steered_text(model, args.prompt, [], **options)[0]
        steered = steered_text(model, args.prompt, plan, **options)[0]
    print("\n" + phases.table() + "\n")
    print(f"prompt:    {args.prompt!r}")
    print(f"unsteered: {unsteered!r}")
    print(f"steered:   {steered!r}")
    return 0
