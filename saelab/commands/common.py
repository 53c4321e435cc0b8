"""What `saelab flow` and `saelab steer` share: the layer and seed specs, the `--saes` folder
check, the arguments both take and a wall-time log of each phase.

Errors a user can fix are `SystemExit("saelab <command>: error: ...")` (argparse's own form,
exit status 1 rather than 2 once parsing is done) so the command prints one line, not a
traceback; the spec parsers raise ValueError and `arg_type` turns that into argparse's
`ArgumentTypeError`, whose message argparse prints as given.
"""

from __future__ import annotations

import argparse
import re
import time
from contextlib import contextmanager
from pathlib import Path

import saelab

SEED_SPEC = re.compile(r"([a-z_]+)\.(\d+):(\d+)")


def fail(command: str, message: str):
    """Stop the command with a one-line message (SystemExit carries it to stderr)."""
    raise SystemExit(f"saelab {command}: error: {message}")


def parse_layers(spec: str) -> list[int]:
    """Sorted distinct layers of a spec such as "8-16", "12", "8,10,12" or "1-3,7".
    Flow needs layers >= 1 (block L's input is `resid_post.{L-1}`)."""
    layers: set[int] = set()
    parts = [part.strip() for part in str(spec).split(",")]
    for part in parts:
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise ValueError(
                f"bad layer spec {spec!r}: {part!r} is not a layer or a range "
                "(write e.g. 8-16, 12 or 8,10,12)"
            )
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if last < first:
            raise ValueError(f"bad layer spec {spec!r}: the range {part!r} runs backwards")
        layers.update(range(first, last + 1))
    if min(layers) < 1:
        raise ValueError(
            f"bad layer spec {spec!r}: flow needs layers >= 1 (the input of block L is "
            "resid_post.L-1; block 0 reads the embedding)"
        )
    return sorted(layers)


def parse_seed(spec: str) -> tuple[str, int, int]:
    """`("resid_post", 12, 1234)` from "resid_post.12:1234" (hookpoint:feature)."""
    match = SEED_SPEC.fullmatch(str(spec).strip())
    if match is None:
        raise ValueError(f"bad seed {spec!r}: write hookpoint:feature, e.g. resid_post.12:1234")
    site, layer, feature = match.group(1), int(match.group(2)), int(match.group(3))
    if site != "resid_post":
        raise ValueError(f"bad seed {spec!r}: a flow graph grows from a resid_post feature")
    return site, layer, feature


def arg_type(parse):
    """`parse` for argparse's `type=`: its ValueError message reaches the user unchanged."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    convert.__name__ = parse.__name__
    return convert


def add_shared_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, the data and the run options of both commands."""
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpus", default="medical", help="corpus card (default medical)")
    parser.add_argument(
        "--eval-max-tokens",
        type=int,
        default=8_192,
        help="held-out (test split) tokens to harvest (default 8192)",
    )
    parser.add_argument("--ctx-len", type=int, default=128, help="context length (default 128)")
    parser.add_argument("--seed-value", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def load_saes(command: str, folder: Path) -> dict:
    """`{hookpoint: SAE}` from a folder `saelab.flow.save_layer_saes` wrote, or a clear stop."""
    from saelab.flow import load_layer_saes

    folder = Path(folder)
    if not folder.is_dir():
        fail(command, f"--saes folder {folder} does not exist (write one with saelab flow)")
    try:
        return load_layer_saes(folder)
    except (FileNotFoundError, ValueError) as err:
        fail(command, f"--saes {folder}: {err}")


def fit_model(command: str, saes: dict, model, folder: Path) -> dict:
    """Check every SAE takes the model's hidden size, and move them to the model's device."""
    from saelab.models import d_model, model_device
    from saelab.sae import check_fits

    for name, sae in saes.items():
        try:
            check_fits(sae.cfg, f"{folder}/{name}", d_model(model), "the model's hidden size")
        except ValueError as err:
            fail(command, str(err))
    return {name: sae.to(model_device(model)) for name, sae in saes.items()}


def check_layers(command: str, layers: list[int], model, option: str = "--layers") -> None:
    """Every layer must exist in the model."""
    from saelab.models import n_layers

    too_deep = [layer for layer in layers if layer >= n_layers(model)]
    if too_deep:
        fail(command, f"{option}: the model has layers 0..{n_layers(model) - 1}, not {too_deep}")


class Phases:
    """Wall time of each named phase of a command, printed as it ends and as a table."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        print(f"[saelab] {name} ...", flush=True)
        started = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - started
        print(f"[saelab] {name}: {self.seconds[name]:.1f} s", flush=True)

    def table(self) -> str:
        width = max(map(len, self.seconds), default=0)
        lines = [f"  {name:<{width}}  {s:8.1f} s" for name, s in self.seconds.items()]
        return "\n".join(["wall time per phase:", *lines])


def harvest_split(model, hookpoints, args, split: str, max_tokens: int, **options):
    """One aligned harvest of `hookpoints` on `args.corpus`'s `split` (`args.ctx_len` contexts)."""
    texts = saelab.load_corpus(args.corpus, split=split)
    return saelab.harvest(
        model, hookpoints, texts, max_tokens=max_tokens, ctx_len=args.ctx_len, **options
    )
