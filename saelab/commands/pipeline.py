"""The steps `saelab train | eval | compare | cache` share, each read from its config table:
`[load_model]`, `[load_corpus]`, `[harvest]`, and opening a saved cache or SAE named by a
path. API errors a user can fix (an unknown hookpoint, a missing folder) become the
command's one-line error."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import saelab
from saelab.commands.common import fail
from saelab.commands.config import add_config_arguments, argument_names, table


@contextmanager
def api_errors(command: str):
    """ValueError / FileNotFoundError from the API -> `saelab <command>: error: <message>`."""
    try:
        yield
    except (ValueError, FileNotFoundError) as err:
        fail(command, str(err).splitlines()[0] if str(err) else type(err).__name__)


def world_size() -> int:
    """torchrun's WORLD_SIZE (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def model_options(command: str, config: dict, device: str | None) -> dict:
    """`[load_model]` with `--device` applied."""
    options = table(command, config, "load_model", argument_names(saelab.load_model))
    if device is not None:
        options["device"] = device
    return options


def load_model(command: str, config: dict, device: str | None):
    """`saelab.load_model(**[load_model])`, with `--device` winning."""
    with api_errors(command):
        return saelab.load_model(**model_options(command, config, device))


def load_texts(command: str, config: dict, split: str) -> list[str]:
    """`saelab.load_corpus(**[load_corpus])`; `split` is the command's default."""
    options = table(command, config, "load_corpus", argument_names(saelab.load_corpus))
    options.setdefault("name", "medical")
    options.setdefault("split", split)
    with api_errors(command):
        return saelab.load_corpus(**options)


def harvest_options(command: str, config: dict, filled: tuple[str, ...] = ()) -> dict:
    """`[harvest]`'s arguments (the model and texts are the command's); `hookpoints` needed."""
    options = table(
        command, config, "harvest", argument_names(saelab.harvest, ("model", "texts", *filled))
    )
    if "hookpoints" not in options:
        fail(command, '[harvest] needs hookpoints, e.g. hookpoints = "resid_post.15"')
    return options


def harvest(command: str, config: dict, model, split: str, **extra):
    """`saelab.harvest(model, texts, **[harvest], **extra)` on `[load_corpus]`'s `split`."""
    options = {**harvest_options(command, config, tuple(extra)), **extra}
    texts = load_texts(command, config, split)
    with api_errors(command):
        return saelab.harvest(model, texts=texts, **options)


def open_store(command: str, path, hookpoint: str | None = None):
    """The ActivationStore saved at `path` (a `saelab cache` folder); for a multi-hookpoint
    cache, the `hookpoint` sub-folder."""
    from saelab.activations import ActivationStore

    folder = Path(path)
    if hookpoint is not None and (folder / hookpoint / "manifest.json").is_file():
        folder = folder / hookpoint
    if not (folder / "manifest.json").is_file():
        subs = sorted(p.parent.name for p in folder.glob("*/manifest.json"))
        hint = f" (it holds {', '.join(subs)}: name one)" if subs else " (write one: saelab cache)"
        fail(command, f"{folder} is not an activation cache{hint}")
    with api_errors(command):
        return ActivationStore.load(folder)


def open_sae(command: str, path, **options):
    """`saelab.load_sae(path, **options)` or the command's one-line error."""
    with api_errors(command):
        return saelab.load_sae(path, **options)


def output_folder(args, config: dict, default: str) -> Path:
    """`--out`, else the config's `out`, else `default`."""
    out = args.out if args.out is not None else config.get("out", default)
    if not isinstance(out, str | Path):
        fail(args.command, f"out must be a folder path, not {out!r}")
    return Path(out)


def add_config_command(sub, name: str, help_text: str, doc: str, example: str, run):
    """The sub-command `name`: a required TOML config, `--set`, `--out`, `--device`; `run(args)`."""
    import argparse

    parser = sub.add_parser(
        name,
        help=help_text,
        description=doc,
        epilog=example,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, required=True)
    add_run_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def add_run_arguments(parser) -> None:
    """`--out` and `--device`, which win over the config."""
    from pathlib import Path as PathType

    parser.add_argument("--out", type=PathType, default=None, help="output folder (config: out)")
    parser.add_argument(
        "--device", default=None, help="cpu or cuda (config: load_model.device; default cuda)"
    )
