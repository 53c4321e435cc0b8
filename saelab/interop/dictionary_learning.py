"""dictionary_learning (saprmarks): `trainer_i/ae.pt` (a state dict, pickled by
`torch.save`) + `config.json` (`trainer`: `dict_class`, `activation_dim`, `dict_size`, `k`,
`layer`, `lm_name`, `submodule_name`, ...).

- AutoEncoder (`encoder.weight [F,d]`, `encoder.bias`, `decoder.weight [d,F]`, `bias`):
  `relu(enc(x - bias))` -> relu.
- AutoEncoderTopK (the same with `b_dec` for `bias`, buffers `k`, `threshold`):
  `topk(relu(enc(x - b_dec)))` -> topk.
- BatchTopKSAE (as TopK): `f·1[f > θ]` with `f = relu(enc(x - b_dec))` -> batchtopk.
- JumpReluAutoEncoder (`W_enc [d,F]`, `b_enc`, `W_dec [F,d]`, `b_dec`, `threshold [F]`):
  no b_dec subtraction -> jumprelu.

`ae.pt` is read only through `torch.load(weights_only=True)`, and anything but a flat dict
of tensors is refused. BatchTopK's unset threshold (-1) keeps every ReLU'd code, which is
saelab's batchtopk at θ = 0.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from saelab.interop.common import (
    build_sae,
    check_exportable,
    check_tensors,
    config_value,
    kind_tensors,
    read_json,
    saelab_hookpoint,
    split_hookpoint,
)
from saelab.io import atomic_file, atomic_folder, write_json
from saelab.sae.base import SAE

WEIGHTS_FILE = "ae.pt"
CFG_FILE = "config.json"
KIND_OF_CLASS = {
    "AutoEncoder": "relu",
    "AutoEncoderTopK": "topk",
    "BatchTopKSAE": "batchtopk",
    "JumpReluAutoEncoder": "jumprelu",
}
CLASS_OF_KIND = {kind: cls for cls, kind in KIND_OF_CLASS.items()}


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in `ae.pt`, unpickled only by torch's weights-only loader."""
    if not path.exists():
        raise FileNotFoundError(f"{path.parent} is missing {path.name}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ValueError(
            f"{path}: refused: not a plain state dict of tensors (weights-only load failed: "
            f"{str(err).splitlines()[0]})"
        ) from err
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path}: refused: holds {type(state).__name__}, not a dict of tensors")
    return state


def shapes_of(kind: str, d: int, F: int) -> dict[str, tuple]:
    if kind == "jumprelu":
        return {"W_enc": (d, F), "b_enc": (F,), "W_dec": (F, d), "b_dec": (d,), "threshold": (F,)}
    shapes = {"encoder.weight": (F, d), "encoder.bias": (F,), "decoder.weight": (d, F)}
    if kind == "relu":
        return {**shapes, "bias": (d,)}
    return {**shapes, "b_dec": (d,), "k": (), "threshold": ()}


def read_dictionary_learning(folder: Path, dtype: torch.dtype) -> SAE:
    cfg_path = folder / CFG_FILE
    trainer = read_json(cfg_path).get("trainer") or {}
    dict_class = config_value(trainer, "dict_class", cfg_path)
    if dict_class not in KIND_OF_CLASS:
        raise ValueError(
            f"{cfg_path}: dict_class {dict_class!r} has no saelab kind; "
            f"supported: {sorted(KIND_OF_CLASS)}"
        )
    kind = KIND_OF_CLASS[dict_class]
    d = int(config_value(trainer, "activation_dim", cfg_path))
    F = int(config_value(trainer, "dict_size", cfg_path))
    path = folder / WEIGHTS_FILE
    state = load_state(path)
    check_tensors(
        state, shapes_of(kind, d, F), path, f"{CFG_FILE} (activation_dim={d}, dict_size={F})"
    )
    if kind == "jumprelu":
        weights = {
            "W_enc_DF": state["W_enc"],
            "W_dec_FD": state["W_dec"],
            "b_enc_F": state["b_enc"],
            "b_dec_D": state["b_dec"],
            "threshold_F": state["threshold"],
        }
    else:
        weights = {
            "W_enc_DF": state["encoder.weight"].T,
            "W_dec_FD": state["decoder.weight"].T,
            "b_enc_F": state["encoder.bias"],
            "b_dec_D": state["bias" if kind == "relu" else "b_dec"],
        }
    k = None
    if kind in ("topk", "batchtopk"):
        k = int(state["k"])
        if "k" in trainer and int(trainer["k"]) != k:
            raise ValueError(f"{path}: buffer k={k} but {CFG_FILE} says k={trainer['k']}")
        weights["threshold"] = state["threshold"]
    saved = trainer.get("saelab_cfg") or {}
    submodule = trainer.get("submodule_name") or ""
    hookpoint = saelab_hookpoint(submodule)
    if not split_hookpoint(hookpoint) and trainer.get("layer") is not None and not submodule:
        hookpoint = f"resid_post.{int(trainer['layer'])}"
    return build_sae(
        kind,
        weights,
        dtype,
        saved,
        k=k,
        hookpoint=hookpoint,
        model=trainer.get("lm_name") or "",
        neuronpedia_id=saved.get("neuronpedia_id") or "",
        source={
            "format": "dictionary_learning",
            "path": str(path),
            "dict_class": dict_class,
            "hook_name": submodule,
        },
    )


def save_dictionary_learning(sae: SAE, folder: str | Path) -> Path:
    """Write `sae` as a dictionary_learning `trainer_i` folder (`ae.pt` + `config.json`;
    its `utils.load_dictionary(folder)` reads it): relu -> AutoEncoder, topk ->
    AutoEncoderTopK, batchtopk -> BatchTopKSAE, jumprelu -> JumpReluAutoEncoder."""
    check_exportable(sae, tuple(CLASS_OF_KIND), "a dictionary_learning dictionary")
    w = kind_tensors(sae)
    if sae.kind == "jumprelu":
        state = {
            "W_enc": w["W_enc_DF"],
            "b_enc": w["b_enc_F"],
            "W_dec": w["W_dec_FD"],
            "b_dec": w["b_dec_D"],
            "threshold": w["threshold_F"],
        }
    else:
        state = {
            "encoder.weight": w["W_enc_DF"].T,
            "encoder.bias": w["b_enc_F"],
            "decoder.weight": w["W_dec_FD"].T,
        }
        if sae.kind == "relu":
            state["bias"] = w["b_dec_D"]
        else:
            state["b_dec"] = w["b_dec_D"]
            state["k"] = torch.tensor(sae.cfg.k, dtype=torch.int32)
            unset = torch.tensor(-1.0, dtype=torch.float32)  # TopK encodes without it
            state["threshold"] = w["threshold"] if sae.kind == "batchtopk" else unset
    saved = sae.cfg.to_dict()
    if sae.kind == "batchtopk":
        saved["threshold_count"] = float(sae.threshold_count)
    parts = split_hookpoint(sae.cfg.hookpoint)
    trainer = {
        "dict_class": CLASS_OF_KIND[sae.kind],
        "activation_dim": sae.cfg.d_in,
        "dict_size": sae.cfg.width,
        "layer": None if parts is None else parts[1],
        "lm_name": sae.cfg.model or None,
        "submodule_name": None if parts is None else f"{parts[0]}_layer_{parts[1]}",
        "saelab_cfg": saved,
    }
    if sae.kind in ("topk", "batchtopk"):
        trainer["k"] = sae.cfg.k
    with atomic_folder(folder) as tmp:
        with atomic_file(tmp / WEIGHTS_FILE) as weights_tmp:
            torch.save({k: v.contiguous().clone() for k, v in state.items()}, weights_tmp)
        write_json(tmp / CFG_FILE, {"trainer": trainer})
    return Path(folder)
