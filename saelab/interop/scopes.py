"""The Scope releases: Gemma Scope and Llama Scope.

Gemma Scope `params.npz` and Gemma Scope 2 `params.safetensors` + `config.json`.

Both are JumpReLU SAEs that do **not** subtract b_dec before encoding: `pre = x W_enc +
b_enc`, `f = pre·1[pre > θ]` (with a ReLU in front, which θ >= 0 makes a no-op), which is
saelab's JumpReLU as it is. Gemma Scope has no config: the layer comes from the path
(`layer_12/width_16k/...`) and the site from the release name in it (`-res`, `-mlp`);
attention SAEs read `hook_z` (heads before the output projection), which saelab has no
hookpoint for, so their hook name is kept as it is.

Llama Scope: `hyperparams.json` + `checkpoints/final.safetensors` (`encoder.weight
[F,d]`, `encoder.bias`, `decoder.weight [d,F]`, `decoder.bias`, usually bf16).

A JumpReLU SAE trained on inputs scaled to norm sqrt(d): `s = sqrt(d) / norm_in` with
`norm_in = dataset_average_activation_norm.in`, one scalar `jump_relu_threshold`, and no
b_dec subtraction. saelab follows SAELens's reading of these files (its Llama Scope
loader): `s` folds into the weights (W_enc·s, W_dec/s, b_dec/s) and θ is scaled by `s`
with it, so the loaded SAE takes raw activations; `cfg.input_scale` records `s`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from saelab.interop.common import (
    build_sae,
    check_tensors,
    config_value,
    read_json,
    read_safetensors,
    saelab_hookpoint,
)
from saelab.sae.base import SAE

NPZ_FILE = "params.npz"
GS2_WEIGHTS = "params.safetensors"
GS2_CFG = "config.json"
_NPZ_NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def jumprelu_shapes(names: tuple[str, ...], d: int, F: int) -> dict[str, tuple]:
    w_enc, w_dec, b_enc, b_dec, threshold = names
    return {w_enc: (d, F), w_dec: (F, d), b_enc: (F,), b_dec: (d,), threshold: (F,)}


def gemma_scope_hookpoint(path: Path) -> str:
    """`resid_post.L` / `mlp_out.L` / `blocks.L.attn.hook_z` from a Gemma Scope path."""
    text = str(path.resolve())
    layer = re.search(r"layer_(\d+)", text)
    if layer is None:
        return ""
    L = int(layer.group(1))
    if re.search(r"-res(?:-|/|$)|/res/", text):
        return f"resid_post.{L}"
    if re.search(r"-mlp(?:-|/|$)|/mlp/", text):
        return f"mlp_out.{L}"
    if re.search(r"-att(?:-|/|$)|/att/", text):
        return f"blocks.{L}.attn.hook_z"
    return ""


def read_gemma_scope(folder: Path, dtype: torch.dtype) -> SAE:
    path = folder / NPZ_FILE
    try:
        with np.load(path, allow_pickle=False) as npz:  # never unpickle
            tensors = {name: torch.from_numpy(npz[name].copy()) for name in npz.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable .npz of arrays: {err}") from err
    if "W_enc" not in tensors or tensors["W_enc"].ndim != 2:
        raise ValueError(f"{path}: no 2-D W_enc, so no shapes to check the rest against")
    d, F = tensors["W_enc"].shape
    check_tensors(tensors, jumprelu_shapes(_NPZ_NAMES, d, F), path, f"W_enc [{d}, {F}]")
    hookpoint = gemma_scope_hookpoint(folder)
    return build_sae(
        "jumprelu",
        {
            "W_enc_DF": tensors["W_enc"],
            "W_dec_FD": tensors["W_dec"],
            "b_enc_F": tensors["b_enc"],
            "b_dec_D": tensors["b_dec"],
            "threshold_F": tensors["threshold"],
        },
        dtype,
        hookpoint=hookpoint,
        source={"format": "gemma_scope", "path": str(path), "hook_name": hookpoint},
    )


def read_gemma_scope_2(folder: Path, dtype: torch.dtype) -> SAE:
    cfg_path = folder / GS2_CFG
    cfg = read_json(cfg_path) if cfg_path.exists() else {}
    arch = cfg.get("architecture", "jump_relu")
    if arch != "jump_relu":
        raise ValueError(f"{cfg_path}: architecture {arch!r}; saelab reads jump_relu SAEs")
    hook_in, hook_out = cfg.get("hf_hook_point_in"), cfg.get("hf_hook_point_out")
    path = folder / GS2_WEIGHTS
    tensors = read_safetensors(path)
    if (hook_out and hook_out != hook_in) or "affine_skip_connection" in tensors:
        raise ValueError(
            f"{folder} is a transcoder ({hook_in} -> {hook_out}); saelab loads SAEs only"
        )
    if "w_enc" not in tensors or tensors["w_enc"].ndim != 2:
        raise ValueError(f"{path}: no 2-D w_enc, so no shapes to check the rest against")
    d, F = tensors["w_enc"].shape
    names = ("w_enc", "w_dec", "b_enc", "b_dec", "threshold")
    check_tensors(tensors, jumprelu_shapes(names, d, F), path, f"w_enc [{d}, {F}]")
    return build_sae(
        "jumprelu",
        {
            "W_enc_DF": tensors["w_enc"],
            "W_dec_FD": tensors["w_dec"],
            "b_enc_F": tensors["b_enc"],
            "b_dec_D": tensors["b_dec"],
            "threshold_F": tensors["threshold"],
        },
        dtype,
        hookpoint=saelab_hookpoint(hook_in),
        model=cfg.get("model_name") or "",
        source={"format": "gemma_scope_2", "path": str(path), "hook_name": hook_in or ""},
    )


# --- Llama Scope ------------------------------------------------------------
LLAMA_CFG_FILE = "hyperparams.json"
LLAMA_WEIGHTS_FILE = Path("checkpoints") / "final.safetensors"


def read_llama_scope(folder: Path, dtype: torch.dtype) -> SAE:
    cfg_path = folder / LLAMA_CFG_FILE
    cfg = read_json(cfg_path)
    d, F = config_value(cfg, "d_model", cfg_path), config_value(cfg, "d_sae", cfg_path)
    hook_in = cfg.get("hook_point_in") or cfg.get("hook_point")
    hook_out = cfg.get("hook_point_out", hook_in)
    if hook_out != hook_in:
        raise ValueError(f"{cfg_path} is a transcoder ({hook_in} -> {hook_out}); saelab loads SAEs")
    theta = float(config_value(cfg, "jump_relu_threshold", cfg_path))
    norms = cfg.get("dataset_average_activation_norm") or {}
    norm_in = norms.get("in") if isinstance(norms, dict) else None
    s = 1.0 if norm_in is None else math.sqrt(d) / float(norm_in)
    path = folder / LLAMA_WEIGHTS_FILE
    tensors = read_safetensors(path)
    shapes = {
        "encoder.weight": (F, d),
        "encoder.bias": (F,),
        "decoder.weight": (d, F),
        "decoder.bias": (d,),
    }
    check_tensors(tensors, shapes, path, f"{LLAMA_CFG_FILE} (d_model={d}, d_sae={F})")
    t = {k: v.double() for k, v in tensors.items()}
    weights = {
        "W_enc_DF": t["encoder.weight"].T * s,
        "W_dec_FD": t["decoder.weight"].T / s,
        "b_enc_F": t["encoder.bias"],
        "b_dec_D": t["decoder.bias"] / s,
        "threshold_F": torch.full((F,), theta * s, dtype=torch.float64),
    }
    return build_sae(
        "jumprelu",
        weights,
        dtype,
        hookpoint=saelab_hookpoint(hook_in),
        model=cfg.get("model_name") or "",
        input_scale=s,
        source={"format": "llama_scope", "path": str(path), "hook_name": hook_in or ""},
    )
