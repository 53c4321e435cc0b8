"""An SAE on disk: a folder with `cfg.json` (its config and the saelab version) and
`sae.safetensors` (its state dict). Reading fails with an error naming the file and the
problem: a missing or corrupt file, or tensors that do not fit the config."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saelab.version import __version__

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


def write_cfg(folder: Path, cfg) -> None:
    """`cfg.json` with the saelab version that wrote it."""
    (folder / CFG_FILE).write_text(
        json.dumps({**cfg.to_dict(), "saelab_version": __version__}, indent=2)
    )


def read_cfg(folder: str | Path) -> dict:
    """The `cfg.json` of a saved SAE folder, with clear errors for a missing or corrupt file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no SAE folder at {folder}")
    cfg_path = folder / CFG_FILE
    if not cfg_path.exists():
        raise FileNotFoundError(f"{folder} is missing {CFG_FILE}: not a saved saelab SAE")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path} is not valid JSON: {err}") from err


def config_from_dict(config_class: type, raw: dict[str, Any]):
    """Build a config, ignoring keys it does not know (e.g. `saelab_version`)."""
    names = {f.name for f in fields(config_class)}
    return config_class(**{k: v for k, v in raw.items() if k in names})


def read_folder(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(cfg dict, tensors) of a saved SAE, with clear errors for missing or corrupt files."""
    folder = Path(folder)
    cfg = read_cfg(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.exists():
        raise FileNotFoundError(f"{folder} is missing {WEIGHTS_FILE}: not a saved saelab SAE")
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{weights_path} is corrupt or truncated: {err}") from err
    return cfg, tensors


def check_state(sae: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Names and shapes of `tensors` must be exactly `sae`'s; the error names the mismatch."""
    expected = sae.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{where}: weights do not fit a {sae.kind} SAE "
            f"(missing {missing}, unexpected {unexpected})"
        )
    for name, value in expected.items():
        if tensors[name].shape != value.shape:
            raise ValueError(
                f"{where}: {name} has shape {tuple(tensors[name].shape)} but cfg.json "
                f"(d_in={sae.cfg.d_in}, width={sae.cfg.width}) needs {tuple(value.shape)}"
            )
