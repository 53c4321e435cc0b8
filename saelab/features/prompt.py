"""Latents on a typed prompt: every latent's code on every token, and rankings of them.

`prompt_codes` runs the model once on a prompt and keeps the dense codes `[T, F]` (a
prompt is short), so a dashboard can show the selected latent's code on each token and
rank the latents on any one token without running the model again. Shapes in names:
T prompt tokens (BOS excluded), F latents.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from saelab.activations import keep_mask
from saelab.data import token_str
from saelab.features.stats import encode_codes
from saelab.interventions import read_hookpoints
from saelab.models import model_device


class PromptCodes(NamedTuple):
    """Every latent's code on every token of a prompt (`prompt_codes`)."""

    tokens: list[str]  # the prompt's token pieces (BOS not included)
    codes_TF: torch.Tensor  # float32 codes
    kept_T: torch.Tensor  # bool; False at attention sinks (harvest drops those: unreliable)


class TokenLatents(NamedTuple):
    """The strongest latents on one prompt token (`latents_on_text`)."""

    token: str
    latents: list[tuple[int, float]]  # (latent, code), code descending, only non-zero codes
    kept: bool  # False for an attention-sink position (harvest drops those; codes unreliable)


@torch.no_grad()
def prompt_codes(sae, model, hookpoint: str, text: str) -> PromptCodes:
    """Codes of every latent on every token of `text` (BOS prepended, not reported).

    The hookpoint is read by `interventions.read_hookpoints` (one trace that stops there).
    Positions the harvest rule would drop as attention sinks are flagged in `kept_T`.
    """
    tokenizer = model.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    if not ids:
        return PromptCodes([], torch.zeros(0, int(sae.cfg.width)), torch.zeros(0, dtype=bool))
    ids_1T = torch.tensor([ids], device=model_device(model))
    acts_1TD = read_hookpoints(model, [hookpoint], ids_1T)[0].float().cpu()
    kept_T = keep_mask(acts_1TD)[0]
    codes_TF = encode_codes(sae, acts_1TD[0])
    start = 1 if tokenizer.bos_token_id is not None else 0
    tokens = [token_str(tokenizer, i) for i in ids[start:]]
    return PromptCodes(tokens, codes_TF[start:], kept_T[start:])


def rank_latents(codes_F: torch.Tensor, top_k: int = 10) -> list[tuple[int, float]]:
    """The `top_k` latents with the largest codes in `codes_F`, as `(latent, code)`, code
    descending (ties: lower id first); latents with code 0 are left out."""
    codes_F = codes_F.float()
    order = torch.argsort(-codes_F, stable=True)[:top_k]
    return [(int(f), float(codes_F[f])) for f in order.tolist() if codes_F[f] != 0]


def latents_on_text(sae, model, hookpoint: str, text: str, top_k: int = 5) -> list[TokenLatents]:
    """The `top_k` strongest latents on every token of `text` (`prompt_codes`, ranked)."""
    codes = prompt_codes(sae, model, hookpoint, text)
    return [
        TokenLatents(tok, rank_latents(codes_F, top_k), bool(kept))
        for tok, codes_F, kept in zip(codes.tokens, codes.codes_TF, codes.kept_T, strict=True)
    ]
