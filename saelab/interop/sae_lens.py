"""SAELens v6 folders: `cfg.json` + `sae_weights.safetensors` (W_enc [d,F], W_dec [F,d],
b_enc, b_dec, and `threshold` [F] for jumprelu).

Reading keeps SAELens's encode exactly: `standard` -> relu, `topk` -> topk, `jumprelu` ->
jumprelu, or batchtopk when the file is a BatchTopK SAE as SAELens saves it (jumprelu with
one threshold θ·1) and says its `k`. Where SAELens's `apply_b_dec_to_input` differs from the
saelab kind's convention, `b_dec W_enc` moves into `b_enc`; `rescale_acts_by_decoder_norm`
moves the decoder norms into the encoder. Writing exports exactly SAELens's tensors (its
`load_state_dict` is strict) with `metadata.sae_lens_version` >= 6 (older versions make it
rebuild the metadata) and the saelab config under `metadata.saelab_cfg` (SAELens keeps
unknown metadata keys), so saelab -> SAELens -> saelab is bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.interop.common import (
    build_sae,
    check_exportable,
    check_tensors,
    config_value,
    fold_b_dec,
    kind_tensors,
    read_json,
    read_safetensors,
    saelab_hookpoint,
    transformer_lens_hook,
)
from saelab.io import atomic_folder, write_json, write_safetensors
from saelab.sae.base import SAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SAE_LENS_VERSION = "6.0.0"  # the metadata layout this writer follows
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def is_sae_lens(folder: Path) -> bool:
    return (folder / WEIGHTS_FILE).exists()


def read_sae_lens(
    folder: Path, dtype: torch.dtype, norm_scaling_factor: float | None = None
) -> SAE:
    """`norm_scaling_factor`: for `normalize_activations: expected_average_only_in`, the
    factor a SAELens release lists (its from_pretrained folds it the same way)."""
    cfg_path = folder / CFG_FILE
    if not cfg_path.exists():
        raise FileNotFoundError(f"{folder} has {WEIGHTS_FILE} but no {CFG_FILE}")
    cfg = read_json(cfg_path)
    meta = {**cfg, **(cfg.get("metadata") or {})}  # before 6.0 the metadata keys were flat
    arch = cfg.get("architecture", "standard")
    if arch not in ("standard", "topk", "jumprelu"):
        raise ValueError(
            f"{cfg_path}: SAELens architecture {arch!r} has no saelab kind; "
            "supported: standard, topk, jumprelu (BatchTopK is saved as jumprelu)"
        )
    norm = cfg.get("normalize_activations")
    if norm not in (None, "none") and not (
        norm == "expected_average_only_in" and norm_scaling_factor
    ):
        raise ValueError(
            f"{cfg_path}: normalize_activations={cfg['normalize_activations']!r} needs a "
            "scaling factor the folder does not hold; fold it with SAELens first"
        )
    d, F = config_value(cfg, "d_in", cfg_path), config_value(cfg, "d_sae", cfg_path)
    tensors = read_safetensors(folder / WEIGHTS_FILE)
    shapes = {"W_enc": (d, F), "W_dec": (F, d), "b_enc": (F,), "b_dec": (d,)}
    if arch == "jumprelu":
        shapes["threshold"] = (F,)
    check_tensors(tensors, shapes, folder / WEIGHTS_FILE, f"{CFG_FILE} (d_in={d}, d_sae={F})")
    tensors = {k: v.double() for k, v in tensors.items()}  # folds round once, to `dtype`
    W_enc_DF, W_dec_FD, b_enc_F, b_dec_D = (
        tensors[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")
    )
    subtracts = bool(cfg.get("apply_b_dec_to_input", True))
    saved = meta.get("saelab_cfg") or {}
    threshold_F = tensors.get("threshold")
    k = cfg.get("k", saved.get("k"))
    if (
        arch == "jumprelu"
        and subtracts
        and k is not None
        and bool((threshold_F == threshold_F[0]).all())
    ):
        kind, extra = "batchtopk", {"threshold": threshold_F[0], "k": int(k)}
    elif arch == "jumprelu":
        kind, extra = "jumprelu", {"threshold_F": threshold_F}
        if subtracts:  # saelab's JumpReLU encodes x W_enc + b_enc
            b_enc_F = fold_b_dec(W_enc_DF, b_enc_F, b_dec_D, -1.0)
    else:
        kind = "relu" if arch == "standard" else "topk"
        extra = {} if arch == "standard" else {"k": int(config_value(cfg, "k", cfg_path))}
        if not subtracts:  # saelab's ReLU/TopK encode (x - b_dec) W_enc + b_enc
            b_enc_F = fold_b_dec(W_enc_DF, b_enc_F, b_dec_D, +1.0)
        if cfg.get("rescale_acts_by_decoder_norm"):  # pre·||W_dec_i||, decode f/||W_dec_i||
            norm_F = W_dec_FD.norm(dim=1)
            W_enc_DF, b_enc_F, W_dec_FD = (
                W_enc_DF * norm_F,
                b_enc_F * norm_F,
                W_dec_FD / norm_F[:, None],
            )
    weights = {"W_enc_DF": W_enc_DF, "W_dec_FD": W_dec_FD, "b_enc_F": b_enc_F, "b_dec_D": b_dec_D}
    weights.update({n: w for n, w in extra.items() if n != "k"})
    sae = build_sae(
        kind,
        weights,
        dtype,
        saved,
        k=extra.get("k"),
        hookpoint=saelab_hookpoint(meta.get("hook_name") or meta.get("hook_point")),
        model=meta.get("model_name") or "",
        neuronpedia_id=meta.get("neuronpedia_id") or "",
        source={
            "format": "sae_lens",
            "path": str(folder),
            "architecture": arch,
            "hook_name": meta.get("hook_name") or meta.get("hook_point") or "",
        },
    )
    if norm == "expected_average_only_in":  # W_enc·s, W_dec/s, b_dec/s, as SAELens folds it
        sae.fold_input_scale(float(norm_scaling_factor))
    return sae


def save_sae_lens(sae: SAE, folder: str | Path) -> Path:
    """Write `sae` as a SAELens v6 folder (`SAE.load_from_disk(folder)` reads it).

    relu -> standard, topk -> topk, jumprelu -> jumprelu (no b_dec subtraction), batchtopk
    -> jumprelu with threshold θ·1 (as SAELens saves its BatchTopK). The SAE already takes
    raw activations (saelab folds its input scale when training ends), so
    `normalize_activations` is "none".
    """
    check_exportable(sae, ("relu", "topk", "batchtopk", "jumprelu"), "a SAELens SAE")
    w = kind_tensors(sae)
    tensors = {
        "W_enc": w["W_enc_DF"],
        "W_dec": w["W_dec_FD"],
        "b_enc": w["b_enc_F"],
        "b_dec": w["b_dec_D"],
    }
    arch = {"relu": "standard", "topk": "topk"}.get(sae.kind, "jumprelu")
    if sae.kind == "jumprelu":
        tensors["threshold"] = w["threshold_F"]
    if sae.kind == "batchtopk":
        tensors["threshold"] = w["threshold"].expand(sae.cfg.width)
    saved = sae.cfg.to_dict()
    if sae.kind == "batchtopk":
        saved["threshold_count"] = float(sae.threshold_count)
    dtype = next(name for name, dt in _DTYPES.items() if dt == w["W_dec_FD"].dtype)
    cfg = {
        "architecture": arch,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.width,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": sae.kind != "jumprelu",
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAE_LENS_VERSION,
            "sae_lens_training_version": None,
            "model_name": sae.cfg.model or None,
            "hook_name": transformer_lens_hook(sae.cfg.hookpoint) or None,
            "hook_head_index": None,
            "neuronpedia_id": sae.cfg.neuronpedia_id or None,
            "saelab_cfg": saved,
        },
    }
    if arch == "topk":
        cfg.update(k=sae.cfg.k, rescale_acts_by_decoder_norm=False)
    if sae.kind == "batchtopk":
        cfg["k"] = sae.cfg.k  # dropped by SAELens, read back by saelab
    with atomic_folder(folder) as tmp:
        write_safetensors(tmp / WEIGHTS_FILE, tensors)
        write_json(tmp / CFG_FILE, cfg)
    return Path(folder)
