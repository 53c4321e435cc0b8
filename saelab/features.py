"""Per-latent views of a trained SAE: statistics, top contexts, logit effects, concepts.

Everything streams over an `ActivationStore` batch by batch, so no dense `[N, F]` code
matrix is ever held. Shapes in names: N store rows, F latents, K top-k, V vocabulary,
D model width. A latent "fires" on a token when its code is non-zero (as in
`saelab.metrics`). Token strings use the tokenizer's own pieces with the word-start
marker (`▁` for SentencePiece, `Ġ` for byte-level BPE) shown as a space.
"""

from __future__ import annotations

import bisect
import json
import re
from collections import Counter
from functools import lru_cache
from typing import NamedTuple

import torch

from saelab.activations import keep_mask
from saelab.models import first_tensor, hook_module, parse_hookpoint
from saelab.paths import shared_dir

WORD_START_MARKERS = ("▁", "Ġ")
MIN_WORD_LEN = 4  # vocabulary words and matching word-pieces are at least this long


class FeatureStats(NamedTuple):
    """Per-latent statistics over every row of a store (`feature_stats`)."""

    n_tokens: int  # N, rows of the store
    count_F: torch.Tensor  # int64, tokens where the latent fires
    density_F: torch.Tensor  # float64, count_F / N
    mean_act_F: torch.Tensor  # float64, mean code over the tokens where it fires (0 if never)
    max_act_F: torch.Tensor  # float32, largest code (0 if never fires)
    top_values_FK: torch.Tensor  # float32, its K largest codes, descending; 0 where it fired < K times
    top_index_FK: torch.Tensor  # int64, store rows of those codes; -1 pads where it fired < K times


class Histogram(NamedTuple):
    """Histogram of one latent's non-zero codes (`latent_histogram`)."""

    counts_B: torch.Tensor  # int64, tokens per bin; sums to the latent's firing count
    edges_B1: torch.Tensor  # float32, B + 1 bin edges from its smallest to its largest code


class Context(NamedTuple):
    """One top-activating token of a latent with its neighbours (`top_contexts`)."""

    row: int  # store row
    context: int  # index into store.tokens_CT
    position: int  # position in that context
    token: str  # the activating token
    left: list[str]  # up to `window` tokens before it, in order
    right: list[str]  # up to `window` tokens after it, in order
    value: float  # the latent's code on the activating token
    window_acts: list[float | None] | None  # codes on left + token + right; None where not in the store


class LogitEffects(NamedTuple):
    """Tokens a latent's decoder direction promotes and suppresses (`logit_effects`)."""

    latent: int
    promoted: list[str]  # k tokens with the largest logit effect, descending
    promoted_values_K: torch.Tensor
    suppressed: list[str]  # k tokens with the most negative effect, most negative first
    suppressed_values_K: torch.Tensor


class TokenLatents(NamedTuple):
    """The strongest latents on one prompt token (`latents_on_text`)."""

    token: str
    latents: list[tuple[int, float]]  # (latent, code), code descending, only non-zero codes
    kept: bool  # False for an attention-sink position (harvest drops those; codes unreliable)


class FrequentTokens(NamedTuple):
    """The corpus's most frequent tokens (`frequent_tokens`)."""

    ids_N: torch.Tensor  # int64 token ids, most frequent first
    counts_N: torch.Tensor  # int64 occurrences among the store's rows
    tokens: list[str]


class Redundancy(NamedTuple):
    """How far one block's decoder rows repeat another's (`decoder_redundancy`)."""

    block_F: torch.Tensor  # [F_block] each row's largest |cosine| with any reference row
    reference_F: torch.Tensor  # [F_ref] each reference row's largest |cosine| with another reference row


# --- helpers --------------------------------------------------------------------------------
def token_str(tokenizer, token_id: int) -> str:
    """A readable token piece: the tokenizer's piece with the word-start marker as a space."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    for marker in WORD_START_MARKERS:
        piece = piece.replace(marker, " ")
    return piece.replace("Ċ", "\n")


def _sae_device(sae) -> torch.device:
    return next(sae.parameters()).device


def _encode_rows(sae, store, rows_N: torch.Tensor) -> torch.Tensor:
    """Codes `[len(rows), F]` of some store rows (float32, on CPU)."""
    x = store.get(rows_N).to(_sae_device(sae), next(sae.parameters()).dtype)
    return sae.encode(x).float().cpu()


def _row_batches(store, batch_size: int):
    """(first row, codes input `[B, D]`) over the store in row order."""
    for start in range(0, len(store), batch_size):
        yield start, store.get(torch.arange(start, min(start + batch_size, len(store))))


# --- statistics ------------------------------------------------------------------------------
@torch.no_grad()
def feature_stats(sae, store, top_k: int = 10, batch_size: int = 4096) -> FeatureStats:
    """Density, mean and max code and the top_k activating rows of every latent, in one pass.

    Each batch is encoded densely (`[batch_size, F]`), reduced to sums, counts, maxima and
    its own per-latent top-k, which is merged into the running top-k, so memory is
    O(batch_size * F + F * top_k) whatever the store's size.
    """
    n_latents = sae.cfg.width
    device, dtype = _sae_device(sae), next(sae.parameters()).dtype
    count_F = torch.zeros(n_latents, dtype=torch.int64)
    sum_F = torch.zeros(n_latents, dtype=torch.float64)
    max_F = torch.zeros(n_latents, dtype=torch.float32)
    top_values_FK = torch.full((n_latents, top_k), float("-inf"))
    top_index_FK = torch.full((n_latents, top_k), -1, dtype=torch.int64)
    for start, x_BD in _row_batches(store, batch_size):
        f_BF = sae.encode(x_BD.to(device, dtype)).float().cpu()
        fired_BF = f_BF != 0
        count_F += fired_BF.sum(0)
        sum_F += f_BF.sum(0, dtype=torch.float64)
        max_F = torch.maximum(max_F, f_BF.max(0).values)
        # Rows where a latent is silent must never enter its top-k.
        masked_BF = f_BF.masked_fill(~fired_BF, float("-inf"))
        k = min(top_k, len(f_BF))
        values_KF, idx_KF = masked_BF.topk(k, dim=0)
        all_values = torch.cat([top_values_FK, values_KF.T], dim=1)
        all_index = torch.cat([top_index_FK, idx_KF.T + start], dim=1)
        top_values_FK, pick_FK = all_values.topk(top_k, dim=1)
        top_index_FK = all_index.gather(1, pick_FK)
    empty_FK = torch.isinf(top_values_FK)
    top_values_FK = top_values_FK.masked_fill(empty_FK, 0.0)
    top_index_FK = top_index_FK.masked_fill(empty_FK, -1)
    n = len(store)
    return FeatureStats(
        n_tokens=n,
        count_F=count_F,
        density_F=count_F.double() / max(n, 1),
        mean_act_F=torch.where(count_F > 0, sum_F / count_F.clamp_min(1), torch.zeros_like(sum_F)),
        max_act_F=max_F,
        top_values_FK=top_values_FK,
        top_index_FK=top_index_FK,
    )


@torch.no_grad()
def latent_histogram(sae, store, latent: int, n_bins: int = 30, batch_size: int = 4096) -> Histogram:
    """Histogram of `latent`'s non-zero codes over the store (one streaming pass).

    Only the latent's non-zero codes are kept (at most its firing count), never `[N, F]`.
    A latent that never fires gives all-zero counts over edges [0, 1].
    """
    device, dtype = _sae_device(sae), next(sae.parameters()).dtype
    values = []
    for _, x_BD in _row_batches(store, batch_size):
        f_B = sae.encode(x_BD.to(device, dtype))[:, latent].float().cpu()
        values.append(f_B[f_B != 0])
    values_M = torch.cat(values) if values else torch.zeros(0)
    if len(values_M) == 0:
        return Histogram(torch.zeros(n_bins, dtype=torch.int64), torch.linspace(0, 1, n_bins + 1))
    lo, hi = float(values_M.min()), float(values_M.max())
    if hi <= lo:
        hi = lo + 1e-6
    counts, edges = torch.histogram(values_M, bins=n_bins, range=(lo, hi))
    return Histogram(counts.long(), edges)


# --- contexts --------------------------------------------------------------------------------
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
        hit = sorted_keys[at] == want if len(sorted_keys) else torch.zeros(len(want), dtype=torch.bool)
        rows = at if order_N is None else order_N[at]
        return [int(r) if h else -1 for r, h in zip(rows.tolist(), hit.tolist(), strict=True)]

    return lookup


@torch.no_grad()
def top_contexts(stats: FeatureStats, store, tokenizer, latent: int, window: int = 4, sae=None) -> list[Context]:
    """The top-activating tokens of `latent` (from `stats`) with `window` neighbours each side.

    Neighbours are read from `store.tokens_CT`. With `sae`, `window_acts` holds the
    latent's code on every window token that is in the store (BOS and sinks are not:
    None there); without it `window_acts` is None.
    """
    tokens_CT = store.tokens_CT
    ctx_len = tokens_CT.shape[1]
    lookup = _store_row_lookup(store) if sae is not None else None
    out = []
    for value, row in zip(stats.top_values_FK[latent].tolist(), stats.top_index_FK[latent].tolist(), strict=True):
        if row < 0:
            continue
        c, p = int(store.context_N[row]), int(store.position_N[row])
        lo, hi = max(0, p - window), min(ctx_len, p + window + 1)
        ids = tokens_CT[c, lo:hi].tolist()
        pieces = [token_str(tokenizer, i) for i in ids]
        window_acts = None
        if sae is not None:
            rows = lookup(c, list(range(lo, hi)))
            present = [r for r in rows if r >= 0]
            codes = _encode_rows(sae, store, torch.tensor(present, dtype=torch.int64))[:, latent].tolist() if present else []
            by_row = dict(zip(present, codes, strict=True))
            window_acts = [by_row.get(r) if r >= 0 else None for r in rows]
        out.append(Context(row=row, context=c, position=p, token=pieces[p - lo], left=pieces[: p - lo],
                           right=pieces[p - lo + 1 :], value=float(value), window_acts=window_acts))
    return out


# --- logit effects ---------------------------------------------------------------------------
def _hf(model):
    return getattr(model, "_module", model)


def final_norm_weight(model) -> torch.Tensor | None:
    """The final norm's gain `[D]` (Llama `model.norm`, GPT-2 `transformer.ln_f`), if any."""
    hf = _hf(model)
    for owner, name in ((getattr(hf, "model", None), "norm"), (getattr(hf, "transformer", None), "ln_f")):
        norm = getattr(owner, name, None) if owner is not None else None
        if norm is not None and getattr(norm, "weight", None) is not None:
            return norm.weight
    return None


@torch.no_grad()
def logit_effects(sae, model, latent: int, k: int = 10) -> LogitEffects:
    """Direct effect of `latent`'s decoder row on the logits: `W_U (g * d)`, `[V]`.

    `W_U` is the output embedding `[V, D]`, `d` the decoder row and `g` the final norm's
    gain, applied as a diagonal scale. The norm's division by the token's RMS (and, for
    LayerNorm, its mean subtraction and bias) is left out: the RMS is a positive
    per-token scalar, so it changes the size of the effects but not their order.
    """
    hf = _hf(model)
    W_U_VD = hf.get_output_embeddings().weight.detach().float().cpu()
    d_D = sae.W_dec_FD[latent].detach().float().cpu()
    gain = final_norm_weight(model)
    if gain is not None:
        d_D = d_D * gain.detach().float().cpu()
    logits_V = W_U_VD @ d_D
    top = logits_V.topk(k)
    bottom = (-logits_V).topk(k)
    tokenizer = getattr(model, "tokenizer", None)
    names = (lambda ids: [token_str(tokenizer, i) for i in ids.tolist()]) if tokenizer is not None else (
        lambda ids: [str(i) for i in ids.tolist()])
    return LogitEffects(latent, names(top.indices), top.values, names(bottom.indices), -bottom.values)


# --- latents on a prompt ---------------------------------------------------------------------
@torch.no_grad()
def latents_on_text(sae, model, hookpoint: str, text: str, top_n: int = 5) -> list[TokenLatents]:
    """The `top_n` strongest latents on every token of `text` (BOS prepended, not reported).

    One nnsight trace reads the hookpoint and stops there. Positions the harvest rule
    would drop as attention sinks are flagged `kept=False` (their codes are unreliable).
    """
    tokenizer = model.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    parsed = parse_hookpoint(model, hookpoint)
    device = next(_hf(model).parameters()).device
    ids_1T = torch.tensor([ids], device=device)
    with model.trace(ids_1T) as tracer:
        saved = first_tensor(hook_module(model, parsed).output).save()
        tracer.stop()
    acts_1TD = saved.float().cpu()
    if acts_1TD.dim() == 2:
        acts_1TD = acts_1TD.unsqueeze(0)
    kept_T = keep_mask(acts_1TD)[0]
    f_TF = sae.encode(acts_1TD[0].to(_sae_device(sae), next(sae.parameters()).dtype)).float().cpu()
    start = 1 if tokenizer.bos_token_id is not None else 0
    n = min(top_n, f_TF.shape[1])
    out = []
    for t in range(start, len(ids)):
        values, latents = f_TF[t].topk(n)
        pairs = [(int(i), float(v)) for v, i in zip(values.tolist(), latents.tolist(), strict=True) if v != 0]
        out.append(TokenLatents(token_str(tokenizer, ids[t]), pairs, bool(kept_T[t])))
    return out


# --- concept alignment -----------------------------------------------------------------------
def _words(text: str) -> set[str]:
    return {w for w in re.split(r"[^a-z]+", text.lower()) if len(w) >= MIN_WORD_LEN}


@lru_cache(maxsize=4)
def _medical_vocabulary(folder: str) -> frozenset[str]:
    from pathlib import Path

    folder = Path(folder)
    words: set[str] = set()
    for record in json.loads((folder / "pubmedqa_pqal.json").read_text()).values():
        for heading in record.get("MESHES") or []:
            words |= _words(str(heading))
    with (folder / "medquad.jsonl").open() as handle:
        for line in handle:
            if line.strip():
                words |= _words(str(json.loads(line).get("focus") or ""))
    return frozenset(words)


GENERAL_WORDS_TEXTS = 2000  # broad-corpus texts counted for `general_words` (~2M words)


@lru_cache(maxsize=4)
def general_words(n: int = 1000) -> frozenset[str]:
    """The `n` most frequent words (letters only, >= 4 long) of broad text: the first
    `GENERAL_WORDS_TEXTS` texts of the broad corpus's train split (Wikipedia)."""
    from saelab.data import load_corpus

    counts: Counter[str] = Counter()
    for text in load_corpus("broad", split="train", max_texts=GENERAL_WORDS_TEXTS):
        counts.update(w for w in re.split(r"[^a-z]+", text.lower()) if len(w) >= MIN_WORD_LEN)
    return frozenset(w for w, _ in counts.most_common(n))


def medical_vocabulary(exclude_general: int = 1000) -> set[str]:
    """Lower-case words (letters only, >= 4 long) of PubMedQA MeSH headings and MedQuAD foci,
    minus the `exclude_general` most frequent words of broad text (`general_words`).

    Read from `shared_dir()/corpora/medical/` (METHODS.md "Concept alignment"). The
    exclusion matters: MeSH headings such as "Time Factors", "Middle Aged" or "Withholding
    Treatment" put "time", "middle" and (as a word-piece prefix) "with" in the raw word set.
    `exclude_general=0` gives the raw set.
    """
    shared = shared_dir()
    if shared is None:
        raise FileNotFoundError("medical_vocabulary needs the shared corpora: set SAELAB_SHARED")
    words = set(_medical_vocabulary(str(shared / "corpora" / "medical")))
    return words - general_words(exclude_general) if exclude_general else words


def frequent_tokens(store, tokenizer, n: int = 200) -> FrequentTokens:
    """The `n` most frequent token ids among the store's rows (the tokens the SAE sees).

    Counted at `tokens_CT[context_N, position_N]`, so BOS and dropped sinks do not count.
    """
    ids_N = store.tokens_CT[store.context_N.long(), store.position_N.long()].long()
    counts = torch.bincount(ids_N)
    n = min(n, int((counts > 0).sum()))
    top = counts.topk(n)
    return FrequentTokens(top.indices, top.values, [token_str(tokenizer, i) for i in top.indices.tolist()])


def is_medical_piece(piece: str, vocabulary: set[str], sorted_vocabulary: list[str] | None = None) -> bool:
    """Whether a token piece belongs to the medical vocabulary.

    The piece is stripped of word-start markers and whitespace and lower-cased; it counts
    when it is >= 4 letters and is a vocabulary word or a prefix of one (word-pieces such
    as "leuk" of "leukemia"). Shorter pieces never count: too many are prefixes of
    everything.
    """
    word = piece
    for marker in WORD_START_MARKERS:
        word = word.replace(marker, "")
    word = word.strip().lower()
    if len(word) < MIN_WORD_LEN or not word.isalpha():
        return False
    if word in vocabulary:
        return True
    sorted_vocabulary = sorted_vocabulary if sorted_vocabulary is not None else sorted(vocabulary)
    at = bisect.bisect_left(sorted_vocabulary, word)
    return at < len(sorted_vocabulary) and sorted_vocabulary[at].startswith(word)


def _strip_marker(piece: str) -> str:
    for marker in WORD_START_MARKERS:
        if piece.startswith(marker):
            return piece[len(marker):]
    return piece


def word_at(ids_T: list[int], t: int, piece) -> str:
    """The whole word (lower case) that token `t` of `ids_T` is part of, or "" if not a word.

    `piece(id)` gives the tokenizer's piece. A word runs from a piece that starts with the
    word-start marker (or follows a non-letter) over the continuation pieces after it, so
    "emia" in "▁leuk|emia" gives "leukemia".
    """
    def continues(i: int) -> bool:  # piece i glues onto the letters before it
        text = piece(ids_T[i])
        return not text.startswith(WORD_START_MARKERS) and text[:1].isalpha() and piece(ids_T[i - 1])[-1:].isalpha()

    if not _strip_marker(piece(ids_T[t])).isalpha():
        return ""
    start, stop = t, t + 1
    while start > 0 and continues(start):
        start -= 1
    while stop < len(ids_T) and continues(stop):
        stop += 1
    word = "".join(_strip_marker(piece(i)) for i in ids_T[start:stop]).lower()
    return word if word.isalpha() else ""


@torch.no_grad()
def concept_alignment(sae, store, tokenizer, vocabulary: set[str] | None = None,
                      frequent: FrequentTokens | torch.Tensor | list[int] | None = None,
                      top_k: int = 10, stats: FeatureStats | None = None, whole_words: bool = True) -> dict:
    """Share of alive latents whose top tokens are medical versus frequent (METHODS.md).

    For each alive latent (fired at least once) take its top-`top_k` activating rows and
    their tokens. The latent is *medical* when strictly more than half of those tokens are
    medical, and *frequent* when strictly more than half are among the corpus's
    `frequent` tokens (default: the 200 most frequent, `frequent_tokens`). A token is
    medical when the whole word it is part of (`word_at`, read from its context) is in
    `vocabulary` (default `medical_vocabulary()`); `whole_words=False` uses the token
    piece alone (`is_medical_piece`: a vocabulary word or a prefix of one), which also
    counts pieces such as "with" that merely begin a medical word. A latent that fired
    fewer than `top_k` times is judged on the rows it has; the two classes may overlap.
    Returns n_alive, n_medical, n_frequent, medical_share, frequent_share (shares of
    n_alive; NaN if none alive), medical_latents, frequent_latents.
    """
    vocabulary = medical_vocabulary() if vocabulary is None else vocabulary
    sorted_vocabulary = sorted(vocabulary)
    if frequent is None:
        frequent = frequent_tokens(store, tokenizer)
    frequent_ids = set((frequent.ids_N if isinstance(frequent, FrequentTokens) else torch.as_tensor(frequent)).tolist())
    stats = feature_stats(sae, store, top_k=top_k) if stats is None else stats
    alive = (stats.count_F > 0).nonzero().squeeze(1).tolist()
    pieces: dict[int, str] = {}
    medical_memo: dict = {}

    def piece(token_id: int) -> str:
        if token_id not in pieces:
            pieces[token_id] = tokenizer.convert_ids_to_tokens(token_id)
        return pieces[token_id]

    def medical(row: int) -> bool:
        c, t = int(store.context_N[row]), int(store.position_N[row])
        if whole_words:
            key = (c, t)
            if key not in medical_memo:
                medical_memo[key] = word_at(store.tokens_CT[c].tolist(), t, piece) in vocabulary
            return medical_memo[key]
        token_id = int(store.tokens_CT[c, t])
        if token_id not in medical_memo:
            medical_memo[token_id] = is_medical_piece(piece(token_id), vocabulary, sorted_vocabulary)
        return medical_memo[token_id]

    medical_latents, frequent_latents = [], []
    for latent in alive:
        rows = [r for r in stats.top_index_FK[latent, :top_k].tolist() if r >= 0]
        if not rows:
            continue
        rows_N = torch.tensor(rows, dtype=torch.int64)
        ids = store.tokens_CT[store.context_N[rows_N].long(), store.position_N[rows_N].long()].tolist()
        if 2 * sum(medical(r) for r in rows) > len(rows):
            medical_latents.append(latent)
        if 2 * sum(i in frequent_ids for i in ids) > len(ids):
            frequent_latents.append(latent)
    n_alive = len(alive)
    share = (lambda k: k / n_alive) if n_alive else (lambda k: float("nan"))
    return {
        "n_alive": n_alive,
        "n_medical": len(medical_latents),
        "n_frequent": len(frequent_latents),
        "medical_share": share(len(medical_latents)),
        "frequent_share": share(len(frequent_latents)),
        "medical_latents": medical_latents,
        "frequent_latents": frequent_latents,
    }


@torch.no_grad()
def decoder_redundancy(sae, block: str | None = None, reference: str = "base", chunk: int = 4096) -> Redundancy:
    """Largest |cosine| between each decoder row of `block` and the rows of `reference`.

    For a residual SAE: does the residual learn new directions or re-learn the base's?
    `block` defaults to the last residual. `reference_F` (each base row against the other
    base rows) is the yardstick: how close two distinct latents of one SAE usually are.
    """
    if not hasattr(sae, "blocks"):
        raise ValueError("decoder_redundancy compares the blocks of a residual SAE (saelab.ResidualSAE)")
    blocks = {b.name: b for b in sae.blocks}
    block = block or sae.blocks[-1].name
    for name in (block, reference):
        if name not in blocks:
            raise ValueError(f"no block {name!r}; the SAE has {list(blocks)}")
    W_FD = sae.W_dec_FD.detach().float()
    W_FD = W_FD / W_FD.norm(dim=1, keepdim=True).clamp_min(1e-8)
    ref_RD = W_FD[blocks[reference].start : blocks[reference].stop]

    def max_cos(rows_ND: torch.Tensor, exclude_self: bool) -> torch.Tensor:
        out = []
        for start in range(0, len(rows_ND), chunk):
            cos_NR = (rows_ND[start : start + chunk] @ ref_RD.T).abs()
            if exclude_self:
                idx = torch.arange(start, min(start + chunk, len(rows_ND)))
                cos_NR[idx - start, idx] = 0.0
            out.append(cos_NR.max(1).values)
        return torch.cat(out)

    return Redundancy(max_cos(W_FD[blocks[block].start : blocks[block].stop], block == reference),
                      max_cos(ref_RD, True))
