"""SAE kinds behind one interface (`base.SAE`) and a registry by name."""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.sae.base import (
    SAE,
    LossOutput,
    SAEConfig,
    SAEOutput,
    TrainContext,
    check_state,
    config_from_dict,
    read_cfg,
    read_folder,
)

SAE_KINDS: dict[str, type[SAE]] = {}


def register(cls: type[SAE]) -> type[SAE]:
    """Class decorator: make a kind available to `make_sae` and `load_sae` by `cls.kind`."""
    SAE_KINDS[cls.kind] = cls
    return cls


def make_sae(kind: str, d_in: int, width: int, seed: int = 0, dtype: torch.dtype = torch.float32, **options) -> SAE:
    """A freshly initialised SAE of `kind`; `options` are fields of that kind's config."""
    if kind not in SAE_KINDS:
        raise ValueError(f"unknown SAE kind {kind!r}; known kinds: {sorted(SAE_KINDS)}")
    cls = SAE_KINDS[kind]
    if hasattr(cls, "load_folder"):
        raise ValueError(f"a {kind} SAE is built from trained parts: use saelab.train_residual(base, acts, ...)")
    cfg = cls.config_class(d_in=d_in, width=width, **options)
    return cls(cfg, seed=seed, dtype=dtype)


def load_sae(folder: str | Path, model=None, hookpoint: str | None = None, device=None) -> SAE:
    """Load a saved SAE folder exactly (bit for bit).

    With `model` (an nnsight model or anything with `.config.hidden_size`), also check that
    the SAE's `d_in` matches the model's width; with `hookpoint`, that it was trained there.
    """
    kind = read_cfg(folder).get("kind")
    if kind not in SAE_KINDS:
        raise ValueError(f"{folder}: cfg.json names SAE kind {kind!r}, known kinds: {sorted(SAE_KINDS)}")
    cls = SAE_KINDS[kind]
    if hasattr(cls, "load_folder"):  # composite kinds (residual) hold SAE folders of their own
        sae = cls.load_folder(folder)
        _check_fits(sae.cfg, folder, model, hookpoint)
        return sae.to(device) if device is not None else sae
    cfg_raw, tensors = read_folder(folder)
    cfg = config_from_dict(cls.config_class, cfg_raw)
    sae = cls(cfg, dtype=tensors["W_dec_FD"].dtype if "W_dec_FD" in tensors else torch.float32)
    check_state(sae, tensors, str(folder))
    sae.load_state_dict(tensors)
    _check_fits(cfg, folder, model, hookpoint)
    return sae.to(device) if device is not None else sae


def _check_fits(cfg: SAEConfig, folder, model, hookpoint: str | None) -> None:
    """The SAE's d_in must be `model`'s hidden size and its hookpoint `hookpoint` (when given)."""
    if model is not None:
        config = getattr(model, "config", None)
        width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
        if width is not None and width != cfg.d_in:
            raise ValueError(
                f"{folder}: this SAE takes d_in={cfg.d_in} activations (trained on {cfg.model or 'unknown model'} "
                f"{cfg.hookpoint}), but the model's hidden size is {width}"
            )
    if hookpoint is not None and cfg.hookpoint and hookpoint != cfg.hookpoint:
        raise ValueError(f"{folder}: this SAE was trained on {cfg.hookpoint}, not {hookpoint}")


from saelab.sae import batchtopk, hierarchical, jumprelu, kron, relu, residual, topk  # noqa: F401  (registers the kinds)
from saelab.sae.residual import ResidualSAE

__all__ = ["SAE", "SAE_KINDS", "LossOutput", "ResidualSAE", "SAEConfig", "SAEOutput", "TrainContext", "load_sae", "make_sae", "register"]
