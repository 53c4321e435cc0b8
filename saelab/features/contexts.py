"""Where a latent fires: its top-activating tokens in context, and the latents on a prompt.

Token strings are the tokenizer's pieces with the word-start marker shown as a space
(`saelab.data.token_str`). Shapes in names: N store rows, F latents, K top rows, T tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from saelab.activations import keep_mask
from saelab.data import token_str
from saelab.features.stats import FeatureStats, encode_rows, sae_device
from saelab.interventions import read_hookpoints
from saelab.models import model_device


class Context(NamedTuple):
    """One top-activating token of a latent with its neighbours (`top_contexts`)."""

    row: int  # store row
    context: int  # index into store.tokens_CT
    position: int  # position in that context
    token: str  # the activating token
    left: list[str]  # up to `window` tokens before it, in order
    right: list[str]  # up to `window` tokens after it, in order
    value: float  # the latent's code on the activating token
    window_acts: list[float | None] | None  # codes on left + token + right; None: not in store


class TokenLatents(NamedTuple):
    """The strongest latents on one prompt token (`latents_on_text`)."""

    token: str
    latents: list[tuple[int, float]]  # (latent, code), code descending, only non-zero codes
    kept: bool  # False for an attention-sink position (harvest drops those; codes unreliable)


def top_token_ids(stats: FeatureStats, store) -> list[list[int]]:
    """Per latent, the token ids of its top-activating store rows, strongest first."""
    rows_FK = stats.top_index_FK
    valid_FK = rows_FK >= 0
    safe_FK = rows_FK.clamp_min(0)
    ids_FK = store.tokens_CT[store.context_N[safe_FK].long(), store.position_N[safe_FK].long()]
    return [ids[ok].tolist() for ids, ok in zip(ids_FK, valid_FK, strict=True)]


def _store_row_lookup(store):
    """Map (context, position) to a store row, or -1 where that position was dropped.

    Harvested rows are ordered by (context, position), so a sorted key + searchsorted
    finds them without a dense `[C, T]` table.
    """
    ctx_len = store.tokens_CT.shape[1]
    keys_N = store.context_N.long() * ctx_len + store.position_N.long()
    ordered = bool((keys_N[1:] > keys_N[:-1]).all()) if len(keys_N) > 1 else True
    order_N = None if ordered else keys_N.argsort()
    sorted_keys = keys_N if ordered else keys_N[order_N]

    def lookup(context: int, positions: list[int]) -> list[int]:
        want = torch.tensor([context * ctx_len + p for p in positions], dtype=torch.int64)
        at = torch.searchsorted(sorted_keys, want).clamp_max(max(len(sorted_keys) - 1, 0))
        if len(sorted_keys):
            hit = sorted_keys[at] == want
        else:
            hit = torch.zeros(len(want), dtype=torch.bool)
        rows = at if order_N is None else order_N[at]
        return [int(r) if h else -1 for r, h in zip(rows.tolist(), hit.tolist(), strict=True)]

    return lookup


@torch.no_grad()
def top_contexts(
    stats: FeatureStats, store, tokenizer, latent: int, window: int = 4, sae=None
) -> list[Context]:
    """The top-activating tokens of `latent` (from `stats`) with `window` neighbours each side.

    Neighbours are read from `store.tokens_CT`. With `sae`, `window_acts` holds the
    latent's code on every window token that is in the store (BOS and sinks are not:
    None there); without it `window_acts` is None.
    """
    tokens_CT = store.tokens_CT
    ctx_len = tokens_CT.shape[1]
    lookup = _store_row_lookup(store) if sae is not None else None
    out = []
    top = zip(
        stats.top_values_FK[latent].tolist(), stats.top_index_FK[latent].tolist(), strict=True
    )
    for value, row in top:
        if row < 0:
            continue
        c, p = int(store.context_N[row]), int(store.position_N[row])
        lo, hi = max(0, p - window), min(ctx_len, p + window + 1)
        pieces = [token_str(tokenizer, i) for i in tokens_CT[c, lo:hi].tolist()]
        window_acts = None
        if sae is not None:
            rows = lookup(c, list(range(lo, hi)))
            present = [r for r in rows if r >= 0]
            codes = []
            if present:
                codes = encode_rows(sae, store, torch.tensor(present, dtype=torch.int64))
                codes = codes[:, latent].tolist()
            by_row = dict(zip(present, codes, strict=True))
            window_acts = [by_row.get(r) if r >= 0 else None for r in rows]
        out.append(
            Context(
                row=row,
                context=c,
                position=p,
                token=pieces[p - lo],
                left=pieces[: p - lo],
                right=pieces[p - lo + 1 :],
                value=float(value),
                window_acts=window_acts,
            )
        )
    return out


@torch.no_grad()
def latents_on_text(sae, model, hookpoint: str, text: str, top_k: int = 5) -> list[TokenLatents]:
    """The `top_k` strongest latents on every token of `text` (BOS prepended, not reported).

    The hookpoint is read by `interventions.read_hookpoints` (one trace that stops there).
    Positions the harvest rule would drop as attention sinks are flagged `kept=False`
    (their codes are unreliable).
    """
    tokenizer = model.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    ids_1T = torch.tensor([ids], device=model_device(model))
    acts_1TD = read_hookpoints(model, [hookpoint], ids_1T)[0].float().cpu()
    kept_T = keep_mask(acts_1TD)[0]
    x_TD = acts_1TD[0].to(sae_device(sae), next(sae.parameters()).dtype)
    f_TF = sae.encode(x_TD).float().cpu()
    start = 1 if tokenizer.bos_token_id is not None else 0
    take = min(top_k, f_TF.shape[1])
    out = []
    for t in range(start, len(ids)):
        values, latents = f_TF[t].topk(take)
        pairs = [
            (int(i), float(v))
            for v, i in zip(values.tolist(), latents.tolist(), strict=True)
            if v != 0
        ]
        out.append(TokenLatents(token_str(tokenizer, ids[t]), pairs, bool(kept_T[t])))
    return out
