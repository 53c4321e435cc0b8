"""SAE kinds by name: `register` (a class decorator), `make_sae`, `load_sae`."""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.sae.base import SAE, check_fits
from saelab.sae.folder import CFG_FILE, SAEFileError, saelab_cfg

SAE_KINDS: dict[str, type[SAE]] = {}


def register(cls: type[SAE]) -> type[SAE]:
    """Class decorator: make a kind available to `make_sae` and `load_sae` by `cls.kind`."""
    SAE_KINDS[cls.kind] = cls
    return cls


def sae_class(kind: str, where: str = "") -> type[SAE]:
    """The class of `kind`; the error lists the known kinds (an `SAEFileError` naming
    `where`, the file that named the kind, when given)."""
    if not isinstance(kind, str) or kind not in SAE_KINDS:
        known = f"known kinds: {sorted(SAE_KINDS)}"
        if where:  # a saved file's kind
            raise SAEFileError(f"{where} names SAE kind {kind!r}; {known}")
        raise ValueError(f"unknown SAE kind {kind!r}; {known}")
    return SAE_KINDS[kind]


def make_sae(
    kind: str, d_in: int, width: int, seed: int = 0, dtype: torch.dtype = torch.float32, **options
) -> SAE:
    """A freshly initialised SAE of `kind`; `options` are fields of that kind's config."""
    cls = sae_class(kind)
    if cls.composite:
        raise ValueError(
            f"a {kind} SAE is built from trained parts: use saelab.train_residual(base, store, ...)"
        )
    return cls(cls.config_class(d_in=d_in, width=width, **options), seed=seed, dtype=dtype)


def load_sae(
    folder: str | Path,
    model=None,
    hookpoint: str | None = None,
    device=None,
    dtype: torch.dtype | None = None,
    sae_id: str | None = None,
) -> SAE:
    """Load a saved SAE folder exactly (bit for bit; `dtype` casts it after loading).

    Other tools' folders (SAELens, Gemma Scope, Llama Scope, sparsify, dictionary_learning)
    load through `saelab.interop`, told by their files, as float32 unless `dtype`; a foreign
    SAE whose file names no hookpoint takes `hookpoint`. A hub repo path
    (`owner/repo/sub/folder`) or a SAELens release name with `sae_id` is downloaded first.
    With `model` (an nnsight model or a Hugging Face one), also check that the SAE's `d_in`
    is the model's hidden size; with `hookpoint`, that it was trained there.
    """
    from saelab.interop import detect_format, hub, load_foreign
    from saelab.models import d_model

    remote = sae_id is not None or hub.looks_like_hub_path(folder)
    saved_cfg = None if remote else saelab_cfg(folder)  # SAEFileError: cfg.json not an object
    if saved_cfg is not None:
        where = str(Path(folder) / CFG_FILE)
        sae = sae_class(saved_cfg["kind"], where=where).load_folder(folder)
    else:
        fmt = "remote" if remote else detect_format(folder)
        sae = load_foreign(folder, dtype=dtype, fmt=None if remote else fmt, sae_id=sae_id)
        if hookpoint and not sae.cfg.hookpoint:
            sae.cfg.hookpoint = str(hookpoint)
    check_fits(
        sae.cfg,
        f"{folder}: this SAE",
        d_in=None if model is None else d_model(model),
        d_in_of="the model's hidden size",
        hookpoint=hookpoint,
    )
    return sae.to(device=device, dtype=dtype) if device is not None or dtype is not None else sae
