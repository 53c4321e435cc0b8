"""Where a latent fires: its activating tokens in whole-word context windows.

A window holds at least `window` tokens each side of the activating token, grows to the
word boundaries (a word split into many pieces is shown whole, up to `MAX_WORD_EXTENSION`
extra pieces a side), and stops at special tokens (BOS, EOS, padding: the document
boundaries of a packed store), which it never shows. Identical windows are listed once,
and an activating token that is itself special is skipped. Token strings are the
tokenizer's pieces with the word-start marker shown as a space (`saelab.data.token_str`).
Shapes in names: N store rows, F latents, K top rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch

from saelab.data import token_str
from saelab.features.codes import LatentCodes, codes_at
from saelab.features.stats import FeatureStats, encode_rows

MAX_WORD_EXTENSION = 12  # extra pieces a side to finish a word (a medical term can be 17)

#: (context, first position, end position) -> the latent's code on each window position
#: (None where that position is not a store row: BOS, dropped sinks)
WindowCodes = Callable[[int, int, int], list[float | None]]


class Context(NamedTuple):
    """One activating token of a latent with its neighbours (`top_contexts`, `contexts_at`)."""

    row: int  # store row
    context: int  # index into store.tokens_CT
    position: int  # position in that context
    token: str  # the activating token
    left: list[str]  # the tokens before it in the window, in order
    right: list[str]  # the tokens after it in the window, in order
    value: float  # the latent's code on the activating token
    window_acts: list[float | None] | None  # codes on left + token + right; None: not in store


def top_token_ids(stats: FeatureStats, store) -> list[list[int]]:
    """Per latent, the token ids of its top-activating store rows, strongest first."""
    rows_FK = stats.top_index_FK
    valid_FK = rows_FK >= 0
    safe_FK = rows_FK.clamp_min(0)
    ids_FK = store.tokens_CT[store.context_N[safe_FK].long(), store.position_N[safe_FK].long()]
    return [ids[ok].tolist() for ids, ok in zip(ids_FK, valid_FK, strict=True)]


def row_lookup(store) -> Callable[[int, list[int]], list[int]]:
    """Map (context, positions) to store rows, -1 where a position was dropped.

    Harvested rows are ordered by (context, position), so a sorted key + searchsorted
    finds them without a dense `[C, T]` table. Build it once per store.
    """
    ctx_len = store.tokens_CT.shape[1]
    keys_N = store.context_N.long() * ctx_len + store.position_N.long()
    ordered = bool((keys_N[1:] > keys_N[:-1]).all()) if len(keys_N) > 1 else True
    order_N = None if ordered else keys_N.argsort()
    sorted_keys = keys_N if ordered else keys_N[order_N]

    def lookup(context: int, positions: list[int]) -> list[int]:
        want = torch.tensor([context * ctx_len + p for p in positions], dtype=torch.int64)
        if not len(sorted_keys):
            return [-1] * len(positions)
        at = torch.searchsorted(sorted_keys, want).clamp_max(len(sorted_keys) - 1)
        hit = sorted_keys[at] == want
        rows = at if order_N is None else order_N[at]
        return [int(r) if h else -1 for r, h in zip(rows.tolist(), hit.tolist(), strict=True)]

    return lookup


def column_codes(lookup, column: LatentCodes) -> WindowCodes:
    """Window codes read off a latent's index column (`sparse_codes` / `latent_codes`)."""

    def codes(context: int, lo: int, hi: int) -> list[float | None]:
        rows = lookup(context, list(range(lo, hi)))
        found = codes_at(column, torch.tensor([max(r, 0) for r in rows])).tolist()
        return [v if r >= 0 else None for r, v in zip(rows, found, strict=True)]

    return codes


def encoded_codes(lookup, sae, store, latent: int) -> WindowCodes:
    """Window codes by encoding the window's store rows with `sae` (no index needed)."""

    def codes(context: int, lo: int, hi: int) -> list[float | None]:
        rows = lookup(context, list(range(lo, hi)))
        present = [r for r in rows if r >= 0]
        found = []
        if present:
            found = encode_rows(sae, store, torch.tensor(present))[:, latent].tolist()
        by_row = dict(zip(present, found, strict=True))
        return [by_row.get(r) if r >= 0 else None for r in rows]

    return codes


def starts_word(piece: str) -> bool:
    """Whether a piece begins a word: it starts with whitespace or a non-alphanumeric."""
    return not piece or not piece[0].isalnum()


def context_window(
    ids: list[int], piece: Callable[[int], str], position: int, window: int, special: set[int]
) -> tuple[int, int]:
    """`(lo, hi)`: the window `ids[lo:hi]` around `position` (see the module docstring)."""

    def stop(taken: int, edge_id: int) -> bool:
        return taken >= window and (
            starts_word(piece(edge_id)) or taken >= window + MAX_WORD_EXTENSION
        )

    lo = position
    while lo > 0 and ids[lo - 1] not in special:
        if stop(position - lo, ids[lo]):
            break
        lo -= 1
    hi = position + 1
    while hi < len(ids) and ids[hi] not in special:
        if stop(hi - position - 1, ids[hi]):
            break
        hi += 1
    return lo, hi


def special_ids(tokenizer) -> set[int]:
    """The tokenizer's special token ids (BOS, EOS, padding, unknown, chat markers)."""
    return {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}


def contexts_at(
    store,
    tokenizer,
    candidates: Iterable[tuple[int, float]],
    window: int = 8,
    limit: int = 10,
    window_codes: WindowCodes | None = None,
) -> list[Context]:
    """Contexts of the `(store row, code)` `candidates`, in their order, up to `limit`:
    special activating tokens skipped, identical windows kept once. With `window_codes`,
    `window_acts` holds the latent's code on every window token."""
    if window < 0 or limit < 0:
        raise ValueError(f"need window >= 0 and limit >= 0, got {window} and {limit}")
    piece = functools.cache(functools.partial(token_str, tokenizer))
    special = special_ids(tokenizer)
    seen, out = set(), []
    for row, value in candidates:
        if len(out) >= limit:
            break
        c, p = int(store.context_N[row]), int(store.position_N[row])
        ids = store.tokens_CT[c].tolist()
        if ids[p] in special:
            continue
        lo, hi = context_window(ids, piece, p, window, special)
        key = tuple(ids[lo:hi])
        if key in seen:
            continue
        seen.add(key)
        pieces = [piece(i) for i in key]
        out.append(
            Context(
                row=int(row),
                context=c,
                position=p,
                token=pieces[p - lo],
                left=pieces[: p - lo],
                right=pieces[p - lo + 1 :],
                value=float(value),
                window_acts=None if window_codes is None else window_codes(c, lo, hi),
            )
        )
    return out


@torch.no_grad()
def top_contexts(
    stats: FeatureStats, store, tokenizer, latent: int, window: int = 4, sae=None
) -> list[Context]:
    """The top-activating tokens of `latent` (from `stats`) in whole-word windows of at
    least `window` neighbours a side (`contexts_at`). With `sae`, `window_acts` holds the
    latent's code on every window token that is in the store (None elsewhere)."""
    top = zip(
        stats.top_index_FK[latent].tolist(), stats.top_values_FK[latent].tolist(), strict=True
    )
    candidates = [(row, value) for row, value in top if row >= 0]
    codes = None if sae is None else encoded_codes(row_lookup(store), sae, store, latent)
    return contexts_at(store, tokenizer, candidates, window, len(candidates), codes)
