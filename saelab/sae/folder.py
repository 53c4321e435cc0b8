"""An SAE on disk: a folder with `cfg.json` (its config and the saelab version) and
`sae.safetensors` (its state dict).

Reading trusts nothing in the files: a missing file is a `FileNotFoundError`, anything
else wrong (JSON that is not an object, a field of the wrong type, a missing required
field, a corrupt or truncated safetensors file, tensors whose names, shapes or dtypes do
not fit the config) is an `SAEFileError` (a ValueError) naming the file and the problem,
raised before any weights are allocated from the config's sizes.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saelab.io import write_json
from saelab.version import __version__

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
# dtypes an SAE's weights may have on disk
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class SAEFileError(ValueError):
    """A saved SAE's file is corrupt or does not describe an SAE; the message names the
    file and the problem."""


def write_cfg(folder: Path, cfg) -> None:
    """`cfg.json` with the saelab version that wrote it."""
    write_json(folder / CFG_FILE, {**cfg.to_dict(), "saelab_version": __version__})


def read_cfg(folder: str | Path) -> dict:
    """The `cfg.json` of a saved SAE folder: a JSON object, else an `SAEFileError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no SAE folder at {folder}")
    cfg_path = folder / CFG_FILE
    if not cfg_path.exists():
        raise FileNotFoundError(f"{folder} is missing {CFG_FILE}: not a saved saelab SAE")
    try:
        raw = json.loads(cfg_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise SAEFileError(f"{cfg_path} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise SAEFileError(f"{cfg_path} must hold a JSON object, found {type(raw).__name__}")
    return raw


def saelab_cfg(path: str | Path) -> dict | None:
    """The cfg of a saelab SAE folder (its `cfg.json` names a `kind`), None for any other
    path (a foreign format tells itself by its own files)."""
    path = Path(path)
    if not (path / CFG_FILE).is_file():
        return None
    raw = read_cfg(path)
    return raw if "kind" in raw else None


def _fits(value, hint) -> bool:
    """Does a JSON value fit a config field's type (int, float, str, bool, dict, list[X],
    unions with None)? Other annotations accept anything."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    return True


def config_from_dict(config_class: type, raw: dict[str, Any]):
    """Build a config, ignoring keys it does not know (e.g. `saelab_version`)."""
    names = {f.name for f in fields(config_class)}
    return config_class(**{k: v for k, v in raw.items() if k in names})


def checked_config(config_class: type, raw: dict[str, Any], where: str):
    """`config_from_dict` for a config read from a file: every known field must have its
    declared type, every field without a default must be there, `d_in` and `width` must be
    positive; `SAEFileError` naming `where` otherwise."""
    hints = typing.get_type_hints(config_class)
    for f in fields(config_class):
        if f.name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:
                raise SAEFileError(f"{where} is missing the required field {f.name!r}")
        elif not _fits(raw[f.name], hints[f.name]):
            raise SAEFileError(
                f"{where}: field {f.name!r} must be {_type_name(hints[f.name])}, "
                f"found {_short(raw[f.name])}"
            )
    for name in ("d_in", "width"):
        if name in raw and raw[name] < 1:
            raise SAEFileError(f"{where}: {name} must be >= 1, found {raw[name]}")
    try:
        return config_from_dict(config_class, raw)
    except ValueError as err:  # the kind's own consistency checks (KronSAE's heads·m·n)
        raise SAEFileError(f"{where}: {err}") from err


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of `folder/sae.safetensors`; `SAEFileError` for a corrupt file."""
    weights_path = Path(folder) / WEIGHTS_FILE
    if not weights_path.exists():
        raise FileNotFoundError(f"{folder} is missing {WEIGHTS_FILE}: not a saved saelab SAE")
    try:
        return load_file(weights_path)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as err:
        raise SAEFileError(f"{weights_path} is corrupt or truncated: {err}") from err


def read_folder(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(cfg dict, tensors) of a saved SAE, with clear errors for missing or corrupt files."""
    return read_cfg(folder), read_weights(folder)


def check_decoder(cfg, tensors: dict[str, torch.Tensor], where: str) -> torch.dtype:
    """The weights' dtype, after checking `W_dec_FD` is there, a float, and `[width, d_in]`:
    done before the SAE is built, so a config with a huge width fails instead of allocating."""
    W_dec_FD = tensors.get("W_dec_FD")
    if W_dec_FD is None:
        raise SAEFileError(f"{where}: the weights have no W_dec_FD (found {sorted(tensors)})")
    if W_dec_FD.dtype not in WEIGHT_DTYPES:
        raise SAEFileError(f"{where}: W_dec_FD is {W_dec_FD.dtype}, not a float dtype")
    if tuple(W_dec_FD.shape) != (cfg.width, cfg.d_in):
        raise SAEFileError(
            f"{where}: W_dec_FD has shape {tuple(W_dec_FD.shape)} but cfg.json "
            f"(d_in={cfg.d_in}, width={cfg.width}) needs {(cfg.width, cfg.d_in)}"
        )
    return W_dec_FD.dtype


def check_sparsity(cfg, sparsity_field: str | None, where: str) -> None:
    """A saved sparsity must be usable: `k` in 1..width, a target L0 above 0."""
    value = None if sparsity_field is None else getattr(cfg, sparsity_field)
    if value is None:
        return
    high = cfg.width if sparsity_field == "k" else float("inf")
    if not 0 < value <= high:
        raise SAEFileError(
            f"{where}: {sparsity_field}={value} is outside (0, {high}] for a width-{cfg.width} SAE"
        )


def check_state(sae: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Names, shapes and dtypes of `tensors` must be exactly `sae`'s; the error names the
    mismatch (loading would otherwise cast a wrong dtype silently)."""
    expected = sae.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise SAEFileError(
            f"{where}: weights do not fit a {sae.kind} SAE "
            f"(missing {missing}, unexpected {unexpected})"
        )
    for name, value in expected.items():
        if tensors[name].shape != value.shape:
            raise SAEFileError(
                f"{where}: {name} has shape {tuple(tensors[name].shape)} but cfg.json "
                f"(d_in={sae.cfg.d_in}, width={sae.cfg.width}) needs {tuple(value.shape)}"
            )
        if tensors[name].dtype != value.dtype:
            raise SAEFileError(
                f"{where}: {name} is {tensors[name].dtype} but the SAE's weights are {value.dtype}"
            )
