"""TOML configs for the saelab commands: reading a file, `--set key=value` overrides, and
checking every key against the Python function it is passed to.

A config's tables are named after the API functions they feed (`[load_model]`,
`[harvest]`, `[train_sae]`, ...) and their keys are those functions' argument names, so
the README's Python calls and the configs read the same. Top-level keys are the command's
own (`out`, and `experiment` for `saelab compare`). Each bad key or value is a one-line
`saelab <command>: error: ...` naming it and what is allowed.
"""

from __future__ import annotations

import argparse
import inspect
import re
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path

from saelab.commands.common import fail

#: A `--set` value that is not TOML but reads as a plain word or path is taken as a string.
BARE_WORD = re.compile(r"[A-Za-z_./~][\w.\-/:~]*")
KEY = re.compile(r"[A-Za-z_][\w-]*")
DTYPES = ("float32", "float16", "bfloat16")
SET_HELP = (
    "override a config key; the value is TOML (a bare word is a string), dotted keys name "
    "tables: --set train_sae.width=256 --set 'evaluate.ks=[8, 16]'. Repeatable."
)


def parse_set(command: str, item: str) -> tuple[list[str], object]:
    """(`["train_sae", "width"]`, 256) from "train_sae.width=256"."""
    key, sep, text = item.partition("=")
    path = key.strip().split(".")
    if not sep or not all(KEY.fullmatch(part) for part in path):
        fail(command, f"--set {item!r}: write key=value, e.g. --set train_sae.width=256")
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        if BARE_WORD.fullmatch(text.strip()) is None:
            fail(
                command,
                f"--set {key}: {text!r} is not a TOML value (quote strings: "
                f"--set '{key}=\"...\"', lists: --set '{key}=[1, 2]')",
            )
        value = text.strip()
    return path, value


def load_config(command: str, path: Path | None, sets: Iterable[str] = ()) -> dict:
    """The TOML file at `path` (none: an empty config) with each `--set` applied in order."""
    config: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            fail(command, f"config file {path} does not exist")
        try:
            config = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            fail(command, f"{path} is not valid TOML: {err}")
    for item in sets or ():
        keys, value = parse_set(command, item)
        table = config
        for depth, key in enumerate(keys[:-1]):
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                fail(command, f"--set {item}: {'.'.join(keys[: depth + 1])} is not a table")
        table[keys[-1]] = value
    return config


def check_keys(command: str, table: dict, allowed: Iterable[str], where: str = "") -> None:
    """Stop at the first key of `table` not in `allowed`, listing the allowed ones."""
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            place = f"[{where}] " if where else ""
            fail(command, f"unknown key {place}{key!r}; allowed: {', '.join(allowed)}")


def argument_names(func: Callable, filled: Iterable[str] = ()) -> list[str]:
    """The named arguments of `func`, less those the command fills in itself."""
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    params = inspect.signature(func).parameters.values()
    return [p.name for p in params if p.kind not in skip and p.name not in set(filled)]


def kind_options(kinds: Iterable[str] | None = None) -> list[str]:
    """The options of the SAE kinds (k, target_l0, k_set, m, ...): their config fields
    beyond the shared `SAEConfig` ones, i.e. `train_sae`'s `**options`. None: every
    trainable kind."""
    from dataclasses import fields

    from saelab.sae import SAE_KINDS, sae_class
    from saelab.sae.base import SAEConfig

    shared = {f.name for f in fields(SAEConfig)}
    names: dict[str, None] = {}
    for kind in kinds if kinds is not None else SAE_KINDS:
        cls = sae_class(kind)
        if not cls.composite:
            names.update(dict.fromkeys(f.name for f in fields(cls.config_class)))
    return [name for name in names if name not in shared]


def table(command: str, config: dict, name: str, allowed: Iterable[str]) -> dict:
    """`config[name]` (a table; absent: empty) with its keys checked and dtypes converted."""
    value = config.get(name, {})
    if not isinstance(value, dict):
        fail(command, f"{name} must be a table ([{name}]), not {value!r}")
    check_keys(command, value, allowed, name)
    return {
        key: to_dtype(command, f"{name}.{key}", v) if "dtype" in key else v
        for key, v in value.items()
    }


def to_dtype(command: str, key: str, value):
    """torch.float16 from "float16" (TOML has no dtype)."""
    import torch

    if value not in DTYPES:
        fail(command, f"{key} = {value!r}: write one of {', '.join(DTYPES)}")
    return getattr(torch, value)


def add_config_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """The config file positional and `--set`."""
    parser.add_argument(
        "config",
        type=Path,
        nargs=None if required else "?",
        help="a TOML config (see configs/)" + ("" if required else "; flags given win"),
    )
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP
    )


def apply_to_flags(
    parser: argparse.ArgumentParser, sub: argparse.ArgumentParser, argv: list[str], args
) -> argparse.Namespace:
    """For commands whose options are flags (quickstart, flow, steer): a config's keys are
    the flags' names (`--max-tokens` -> max_tokens); they become the flags' defaults of
    `sub`, so a flag on the command line still wins. Re-parses `argv` with them."""
    config = load_config(args.command, args.config, args.sets)
    actions = {a.dest: a for a in sub._actions if a.option_strings and a.dest != "help"}
    check_keys(args.command, config, [dest for dest in actions if dest != "sets"])
    sub.set_defaults(**{key: flag_text(actions[key], v) for key, v in config.items()})
    return parser.parse_args(argv)


def flag_text(action: argparse.Action, value):
    """A TOML value as its flag would give it, so the flag's `type` parses it as it parses
    the command line: `layers = 12` -> "12", `layers = [8, 9]` -> "8,9", `methods =
    ["top5", "top1_cosine"]` -> "top5,top1_cosine"."""
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return value if action.type is None else str(value)
