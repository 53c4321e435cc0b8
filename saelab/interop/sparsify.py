"""EleutherAI sparsify: `<run>/<hookpoint>/cfg.json` + `sae.safetensors` (`encoder.weight
[F,d]`, `encoder.bias [F]`, `W_dec [F,d]`, `b_dec [d]`).

Its encode is `topk(relu((x - b_dec) W_enc^T + b_enc))`, saelab's TopK exactly. Groupmax
activations, skip connections and transcoders have no saelab kind and are refused. The
folder name is the hookpoint (`layers.12`, `layers.12.mlp`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.interop.common import (
    build_sae,
    check_exportable,
    check_tensors,
    config_value,
    hf_module_name,
    read_json,
    read_safetensors,
    saelab_hookpoint,
)
from saelab.io import atomic_folder, write_json, write_safetensors
from saelab.sae.base import SAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


def is_sparsify_cfg(cfg: dict) -> bool:
    """A sparsify cfg.json (saelab's own has `kind`, SAELens's `architecture`)."""
    return (
        "kind" not in cfg
        and "architecture" not in cfg
        and ("num_latents" in cfg or "expansion_factor" in cfg or "activation" in cfg)
    )


def read_sparsify(folder: Path, dtype: torch.dtype) -> SAE:
    cfg_path = folder / CFG_FILE
    cfg = read_json(cfg_path)
    for key, refused in (
        ("activation", "groupmax"),
        ("transcode", True),
        ("skip_connection", True),
    ):
        if cfg.get(key) == refused:
            raise ValueError(f"{cfg_path}: {key}={refused!r} has no saelab kind (TopK SAEs only)")
    d = int(config_value(cfg, "d_in", cfg_path))
    F = int(cfg.get("num_latents") or d * int(config_value(cfg, "expansion_factor", cfg_path)))
    k = int(config_value(cfg, "k", cfg_path))
    path = folder / WEIGHTS_FILE
    tensors = read_safetensors(path)
    shapes = {"encoder.weight": (F, d), "encoder.bias": (F,), "W_dec": (F, d), "b_dec": (d,)}
    check_tensors(tensors, shapes, path, f"{CFG_FILE} (d_in={d}, {F} latents)")
    saved = cfg.get("saelab_cfg") or {}
    return build_sae(
        "topk",
        {
            "W_enc_DF": tensors["encoder.weight"].T,
            "W_dec_FD": tensors["W_dec"],
            "b_enc_F": tensors["encoder.bias"],
            "b_dec_D": tensors["b_dec"],
        },
        dtype,
        saved,
        k=k,
        hookpoint=saelab_hookpoint(folder.name) or saved.get("hookpoint"),
        model=saved.get("model") or "",
        neuronpedia_id=saved.get("neuronpedia_id") or "",
        source={"format": "sparsify", "path": str(path), "hook_name": folder.name},
    )


def save_sparsify(sae: SAE, run_folder: str | Path) -> Path:
    """Write a TopK `sae` into `run_folder/<hookpoint>/` as sparsify lays it out
    (`SparseCoder.load_from_disk` or `load_many(run_folder, local=True)` read it).

    The hookpoint folder is sparsify's module name (`layers.12`, `layers.12.mlp`,
    `layers.12.self_attn`). Returns that folder.
    """
    check_exportable(sae, ("topk",), "a sparsify SparseCoder")
    name = hf_module_name(sae.cfg.hookpoint) if sae.cfg.hookpoint else "sae"
    folder = Path(run_folder) / name
    cfg = {
        "activation": "topk",
        "expansion_factor": max(1, sae.cfg.width // sae.cfg.d_in),
        "normalize_decoder": True,
        "num_latents": sae.cfg.width,
        "k": sae.cfg.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": sae.cfg.d_in,
        "saelab_cfg": sae.cfg.to_dict(),  # sparsify drops keys it does not know
    }
    tensors = {
        "encoder.weight": sae.W_enc_DF.detach().T.contiguous(),
        "encoder.bias": sae.b_enc_F.detach().clone(),
        "W_dec": sae.W_dec_FD.detach().clone(),
        "b_dec": sae.b_dec_D.detach().clone(),
    }
    with atomic_folder(folder) as tmp:
        write_safetensors(tmp / WEIGHTS_FILE, tensors)
        write_json(tmp / CFG_FILE, cfg)
    return folder
