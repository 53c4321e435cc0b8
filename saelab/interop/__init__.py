"""Other tools' SAE files: read them as saelab SAEs, write saelab SAEs for those tools.

`saelab.load_sae(path)` calls `load_foreign` for any folder that is not saelab's own; the
format is told by its files (`detect_format`). Each reader returns the saelab kind whose
`encode`/`decode` equal the source tool's (../shared/INTEROP.md has the formats and their
traps). Foreign weights load as float32 unless a `dtype` is asked for.
"""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.interop import dictionary_learning, hub, sae_lens, scopes, sparsify
from saelab.interop.common import read_json, saelab_hookpoint
from saelab.interop.dictionary_learning import save_dictionary_learning
from saelab.interop.sae_lens import save_sae_lens
from saelab.interop.sparsify import save_sparsify
from saelab.sae.base import SAE

READERS = {
    "sae_lens": sae_lens.read_sae_lens,
    "gemma_scope": scopes.read_gemma_scope,
    "gemma_scope_2": scopes.read_gemma_scope_2,
    "llama_scope": scopes.read_llama_scope,
    "sparsify": sparsify.read_sparsify,
    "dictionary_learning": dictionary_learning.read_dictionary_learning,
}
KNOWN = (
    "saelab (cfg.json with 'kind' + sae.safetensors), SAELens (cfg.json + "
    "sae_weights.safetensors), Gemma Scope (params.npz), Gemma Scope 2 (params.safetensors), "
    "Llama Scope (hyperparams.json + checkpoints/final.safetensors), sparsify (cfg.json + "
    "sae.safetensors), dictionary_learning (ae.pt + config.json)"
)
# A path to one of these files means the folder that holds it.
_FILE_NAMES = {"params.npz", "params.safetensors", "ae.pt", "sae_weights.safetensors"}


def sae_folder(path: str | Path) -> Path:
    """The folder of an SAE given its folder or its weights file."""
    path = Path(path)
    if path.is_file() and path.name in _FILE_NAMES:
        return path.parent
    if not path.exists():
        raise FileNotFoundError(f"no SAE folder at {path}")
    return path


def detect_format(path: str | Path) -> str:
    """`saelab` or a key of `READERS`, told by the folder's files; ValueError naming what was
    found for anything else."""
    folder = sae_folder(path)
    has = lambda name: (folder / name).exists()  # noqa: E731
    if has("sae.safetensors") or has("cfg.json") and not has(sae_lens.WEIGHTS_FILE):
        if not has("cfg.json"):
            raise FileNotFoundError(f"{folder} is missing cfg.json: not a saved saelab SAE")
        cfg = read_json(folder / "cfg.json")
        if "kind" in cfg:
            return "saelab"
        if sparsify.is_sparsify_cfg(cfg):
            return "sparsify"
    if sae_lens.is_sae_lens(folder):
        return "sae_lens"
    if has(scopes.NPZ_FILE):
        return "gemma_scope"
    if has(scopes.GS2_WEIGHTS):
        return "gemma_scope_2"
    if has(scopes.LLAMA_CFG_FILE):
        return "llama_scope"
    if has(dictionary_learning.WEIGHTS_FILE) or has(dictionary_learning.CFG_FILE):
        return "dictionary_learning"
    found = sorted(p.name for p in folder.iterdir())[:12] if folder.is_dir() else [folder.name]
    raise ValueError(f"{folder}: unknown SAE format (found {found}); saelab reads {KNOWN}")


def load_foreign(
    path: str | Path,
    dtype: torch.dtype | None = None,
    fmt: str | None = None,
    sae_id: str | None = None,
) -> SAE:
    """The SAE in another tool's folder as a saelab SAE (float32 unless `dtype`).

    `path` may also be a hub repo path (`owner/repo/sub/folder`) or, with `sae_id`, a
    SAELens release name: the SAE's folder is downloaded first (`hub.fetch`).
    """
    release = {}
    if sae_id is not None or hub.looks_like_hub_path(path):
        path, release = hub.fetch(str(path), sae_id)
    fmt = fmt or detect_format(path)
    if fmt == "saelab":  # a saelab SAE published on the hub
        from saelab.sae.registry import load_sae

        return load_sae(path, dtype=dtype)
    if fmt not in READERS:
        raise ValueError(f"{path}: no reader for format {fmt!r}; saelab reads {KNOWN}")
    options = {}
    if fmt == "sae_lens" and release.get("norm_scaling_factor"):
        options["norm_scaling_factor"] = release["norm_scaling_factor"]
    sae = READERS[fmt](sae_folder(path), dtype or torch.float32, **options)
    if release:
        sae.cfg.model = sae.cfg.model or release.get("model") or ""
        sae.cfg.neuronpedia_id = sae.cfg.neuronpedia_id or release.get("neuronpedia_id") or ""
        sae.cfg.source["hub"] = f"{release['repo_id']}/{release['folder']}".rstrip("/")
    return sae


__all__ = [
    "READERS",
    "detect_format",
    "load_foreign",
    "saelab_hookpoint",
    "save_dictionary_learning",
    "save_sae_lens",
    "save_sparsify",
]
