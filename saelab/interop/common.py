"""What every format reader and writer shares: hook names, strict tensor checks, building a
saelab SAE from tensors in saelab's orientation, and exact JumpReLU thresholds.

Foreign tensors are checked against the file's own config before anything is built, so a
mismatch names the file, the tensor and both shapes (../shared/INTEROP.md, "traps").
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saelab.sae.base import SAE
from saelab.sae.folder import config_from_dict
from saelab.sae.registry import sae_class

# (pattern, saelab site) for the hook names other tools write; group 1 is the layer.
_HOOK_PATTERNS = [
    (r"blocks\.(\d+)\.hook_resid_post", "resid_post"),  # TransformerLens (SAELens, Llama Scope)
    (r"blocks\.(\d+)\.hook_mlp_out", "mlp_out"),
    (r"blocks\.(\d+)\.hook_attn_out", "attn_out"),
    (r"(?:model\.)?layers\.(\d+)(?:\.output)?", "resid_post"),  # HF modules (sparsify, GS 2)
    (r"(?:model\.)?layers\.(\d+)\.mlp(?:\.output)?", "mlp_out"),
    (r"(?:model\.)?layers\.(\d+)\.self_attn(?:\.output)?", "attn_out"),
    # Gemma 2/3 add the MLP branch to the residual after this norm: that is their mlp_out
    (r"model\.layers\.(\d+)\.post_feedforward_layernorm\.output", "mlp_out"),
    (r"(?:resid_post|mlp_out|attn_out)_layer_(\d+)", None),  # dictionary_learning submodules
]
_SAELAB_TO_TL = {
    "resid_post": "hook_resid_post",
    "mlp_out": "hook_mlp_out",
    "attn_out": "hook_attn_out",
}
_SAELAB_TO_HF = {"resid_post": "", "mlp_out": ".mlp", "attn_out": ".self_attn"}


def saelab_hookpoint(name: str | None) -> str:
    """saelab's name (`resid_post.12`) for another tool's hook name; names saelab has no site
    for (e.g. `blocks.12.attn.hook_z`, heads before the output projection) come back as is."""
    name = (name or "").strip()
    for pattern, site in _HOOK_PATTERNS:
        match = re.fullmatch(pattern, name)
        if match:
            site = site or name.split("_layer_")[0]
            return f"{site}.{int(match.group(1))}"
    return name


def split_hookpoint(hookpoint: str) -> tuple[str, int] | None:
    """(site, layer) of a saelab hookpoint name, None for anything else."""
    match = re.fullmatch(r"(resid_post|mlp_out|attn_out)\.(\d+)", hookpoint or "")
    return None if match is None else (match.group(1), int(match.group(2)))


def transformer_lens_hook(hookpoint: str) -> str:
    """`blocks.12.hook_resid_post` for `resid_post.12` (SAELens's names); others unchanged."""
    parts = split_hookpoint(hookpoint)
    return hookpoint if parts is None else f"blocks.{parts[1]}.{_SAELAB_TO_TL[parts[0]]}"


def hf_module_name(hookpoint: str) -> str:
    """`layers.12` / `layers.12.mlp` / `layers.12.self_attn` (sparsify's folder names)."""
    parts = split_hookpoint(hookpoint)
    if parts is None:
        raise ValueError(f"no Hugging Face module name for hookpoint {hookpoint!r}")
    return f"layers.{parts[1]}{_SAELAB_TO_HF[parts[0]]}"


def read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(obj).__name__}")
    return obj


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise FileNotFoundError(f"{path.parent} is missing {path.name}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is corrupt or truncated: {err}") from err


def config_value(cfg: dict, key: str, path: Path):
    if key not in cfg:
        raise ValueError(f"{path} has no {key!r}: not a complete config")
    return cfg[key]


def check_tensors(
    tensors: dict[str, torch.Tensor], shapes: dict[str, tuple], path: Path, config: str
) -> None:
    """The file must hold exactly the tensors in `shapes`, each of that shape (`config`
    says where the shapes come from, e.g. "cfg.json d_in=64, d_sae=256")."""
    missing = sorted(set(shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(shapes))
    if missing or unexpected:
        raise ValueError(
            f"{path}: tensors do not fit its config (missing {missing}, unexpected {unexpected})"
        )
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise ValueError(
                f"{path}: {name} has shape {tuple(tensors[name].shape)} but {config} "
                f"needs {tuple(shape)}"
            )


def exact_log(threshold_F: torch.Tensor) -> torch.Tensor:
    """`log θ` whose `exp` is θ bit for bit where float `exp` can reach θ (JumpReLU stores
    log θ): always for a θ that saelab wrote (it is an `exp`), and otherwise the nearest
    (small θ fall between two `exp` values; one ulp, so codes differ only for
    pre-activations within an ulp of θ). Plain `log` can miss by an ulp: it is nudged.

    θ <= 0 becomes log 0 = -inf (exp gives 0): every tool here also applies a ReLU, so a
    non-positive threshold acts as 0.
    """
    threshold_F = threshold_F.clamp_min(0)
    log_F = threshold_F.log()
    for _ in range(8):
        back_F = log_F.exp()
        if bool((back_F == threshold_F).all()):
            break
        up_F = torch.nextafter(log_F, torch.full_like(log_F, float("inf")))
        down_F = torch.nextafter(log_F, torch.full_like(log_F, float("-inf")))
        log_F = torch.where(
            back_F < threshold_F, up_F, torch.where(back_F > threshold_F, down_F, log_F)
        )
    return log_F


def build_sae(
    kind: str,
    weights: dict[str, torch.Tensor],
    dtype: torch.dtype,
    saved_cfg: dict | None = None,
    **cfg_fields,
) -> SAE:
    """A saelab SAE of `kind` from tensors in saelab's orientation (`W_enc_DF`, `W_dec_FD`,
    `b_enc_F`, `b_dec_D`, and `threshold_F` for jumprelu / `threshold` for batchtopk).

    `saved_cfg`: the saelab config a saelab writer stashed in the file (training settings,
    input scale), restored when it is for this kind; the file's shapes always win.
    """
    cls = sae_class(kind)
    W_dec_FD = weights["W_dec_FD"]
    raw = dict(saved_cfg) if saved_cfg and saved_cfg.get("kind") == kind else {}
    raw.update(d_in=W_dec_FD.shape[1], width=W_dec_FD.shape[0])
    raw.update({k: v for k, v in cfg_fields.items() if v is not None})
    sae = cls(config_from_dict(cls.config_class, raw), dtype=dtype)
    state = sae.state_dict()
    for name in ("W_enc_DF", "W_dec_FD", "b_enc_F", "b_dec_D"):
        state[name] = weights[name].to(dtype)
    if kind == "jumprelu":
        state["log_threshold_F"] = exact_log(weights["threshold_F"].to(dtype))
    if kind == "batchtopk":
        state["threshold"] = weights["threshold"].to(dtype).clamp_min(0).reshape(())
        count = (saved_cfg or {}).get("threshold_count", 0.0)
        state["threshold_count"] = torch.tensor(float(count), dtype=dtype)
    sae.load_state_dict(state)
    return sae


def fold_b_dec(W_enc_DF, b_enc_F, b_dec_D, sign: float) -> torch.Tensor:
    """`b_enc + sign · b_dec W_enc` in float64: moves a b_dec subtraction into (sign -1)
    or out of (sign +1) the encoder bias, for kinds whose convention differs from the file's."""
    return (b_enc_F.double() + sign * (b_dec_D.double() @ W_enc_DF.double())).to(b_enc_F.dtype)


def kind_tensors(sae: SAE) -> dict[str, torch.Tensor]:
    """The encoder/decoder of `sae` in saelab orientation, detached, plus its thresholds."""
    out = {
        "W_enc_DF": sae.W_enc_DF.detach(),
        "W_dec_FD": sae.W_dec_FD.detach(),
        "b_enc_F": sae.b_enc_F.detach(),
        "b_dec_D": sae.b_dec_D.detach(),
    }
    if sae.kind == "jumprelu":
        out["threshold_F"] = sae.threshold_F.detach()
    if sae.kind == "batchtopk":
        out["threshold"] = sae.threshold.detach()
    return out


def check_exportable(sae: SAE, kinds: tuple[str, ...], fmt: str) -> None:
    if sae.kind not in kinds:
        raise ValueError(
            f"a {sae.kind} SAE cannot be written as {fmt}: that format holds {', '.join(kinds)}"
        )
