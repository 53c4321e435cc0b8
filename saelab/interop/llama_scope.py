"""Llama Scope: `hyperparams.json` + `checkpoints/final.safetensors` (`encoder.weight
[F,d]`, `encoder.bias`, `decoder.weight [d,F]`, `decoder.bias`, usually bf16).

A JumpReLU SAE trained on inputs scaled to norm sqrt(d): `s = sqrt(d) / norm_in` with
`norm_in = dataset_average_activation_norm.in`, one scalar `jump_relu_threshold`, and no
b_dec subtraction. saelab follows SAELens's reading of these files (its Llama Scope
loader): `s` folds into the weights (W_enc·s, W_dec/s, b_dec/s) and θ is scaled by `s`
with it, so the loaded SAE takes raw activations; `cfg.input_scale` records `s`.
"""

from __future__ import annotations

import math
from pathlib import Path

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

CFG_FILE = "hyperparams.json"
WEIGHTS_FILE = Path("checkpoints") / "final.safetensors"


def read_llama_scope(folder: Path, dtype: torch.dtype) -> SAE:
    cfg_path = folder / CFG_FILE
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
    path = folder / WEIGHTS_FILE
    tensors = read_safetensors(path)
    shapes = {
        "encoder.weight": (F, d),
        "encoder.bias": (F,),
        "decoder.weight": (d, F),
        "decoder.bias": (d,),
    }
    check_tensors(tensors, shapes, path, f"{CFG_FILE} (d_model={d}, d_sae={F})")
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
