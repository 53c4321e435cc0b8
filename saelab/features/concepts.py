"""Do latents fire on a vocabulary's words (medical terms) or on the corpus's frequent tokens?

docs/methods.md, "Concept alignment". Vocabularies come from the dataset cards
(`saelab.data.vocabulary`); a token counts as a vocabulary word through the whole word
it is part of (`word_at`) or, piece by piece, through `is_medical_piece`.
"""

from __future__ import annotations

import bisect
from typing import NamedTuple

import torch

from saelab.data import MIN_WORD_LEN, WORD_START_MARKERS, token_str
from saelab.data import vocabulary as card_vocabulary
from saelab.features.contexts import top_token_ids
from saelab.features.stats import FeatureStats, feature_stats


class FrequentTokens(NamedTuple):
    """The corpus's most frequent tokens (`frequent_tokens`)."""

    ids_N: torch.Tensor  # int64 token ids, most frequent first
    counts_N: torch.Tensor  # int64 occurrences among the store's rows
    tokens: list[str]


def frequent_tokens(store, tokenizer, top_k: int = 200) -> FrequentTokens:
    """The `top_k` most frequent token ids among the store's rows (the tokens the SAE sees).

    Counted at `tokens_CT[context_N, position_N]`, so BOS and dropped sinks do not count.
    """
    ids_N = store.tokens_CT[store.context_N.long(), store.position_N.long()].long()
    counts = torch.bincount(ids_N)
    top = counts.topk(min(top_k, int((counts > 0).sum())))
    tokens = [token_str(tokenizer, i) for i in top.indices.tolist()]
    return FrequentTokens(top.indices, top.values, tokens)


def is_medical_piece(
    piece: str, vocabulary: set[str], sorted_vocabulary: list[str] | None = None
) -> bool:
    """Whether a token piece belongs to the (medical) vocabulary.

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
            return piece[len(marker) :]
    return piece


def word_at(ids_T: list[int], t: int, piece) -> str:
    """The whole word (lower case) that token `t` of `ids_T` is part of, or "" if not a word.

    `piece(id)` gives the tokenizer's piece. A word runs from a piece that starts with the
    word-start marker (or follows a non-letter) over the continuation pieces after it, so
    "emia" in "▁leuk|emia" gives "leukemia".
    """

    def continues(i: int) -> bool:  # piece i glues onto the letters before it
        text = piece(ids_T[i])
        return (
            not text.startswith(WORD_START_MARKERS)
            and text[:1].isalpha()
            and piece(ids_T[i - 1])[-1:].isalpha()
        )

    if not _strip_marker(piece(ids_T[t])).isalpha():
        return ""
    start, stop = t, t + 1
    while start > 0 and continues(start):
        start -= 1
    while stop < len(ids_T) and continues(stop):
        stop += 1
    word = "".join(_strip_marker(piece(i)) for i in ids_T[start:stop]).lower()
    return word if word.isalpha() else ""


def vocabulary_shares(stats: FeatureStats, store, tokenizer, vocabulary: set[str]) -> torch.Tensor:
    """Share (float64 `[F]`) of each latent's top-activating tokens that pass
    `is_medical_piece` for `vocabulary`; 0 for latents that never fire."""
    ordered = sorted(vocabulary)
    memo: dict[int, bool] = {}
    top_ids = top_token_ids(stats, store)
    shares_F = torch.zeros(len(top_ids), dtype=torch.float64)
    for latent, ids in enumerate(top_ids):
        if not ids:
            continue
        for i in ids:
            if i not in memo:
                memo[i] = is_medical_piece(tokenizer.convert_ids_to_tokens(i), vocabulary, ordered)
        shares_F[latent] = sum(memo[i] for i in ids) / len(ids)
    return shares_F


@torch.no_grad()
def concept_alignment(
    sae,
    store,
    tokenizer,
    vocabulary: set[str] | None = None,
    frequent: FrequentTokens | torch.Tensor | list[int] | None = None,
    top_k: int = 10,
    stats: FeatureStats | None = None,
    whole_words: bool = True,
) -> dict:
    """Share of alive latents whose top tokens are medical versus frequent.

    For each alive latent (fired at least once) take its top-`top_k` activating rows and
    their tokens. The latent is *medical* when strictly more than half of those tokens are
    medical, and *frequent* when strictly more than half are among the corpus's
    `frequent` tokens (default: the 200 most frequent, `frequent_tokens`). A token is
    medical when the whole word it is part of (`word_at`, read from its context) is in
    `vocabulary` (default `saelab.data.vocabulary("medical")`); `whole_words=False` uses
    the token piece alone (`is_medical_piece`: a vocabulary word or a prefix of one), which
    also counts pieces such as "with" that merely begin a medical word. A latent that fired
    fewer than `top_k` times is judged on the rows it has; the two classes may overlap.
    Returns n_alive, n_medical, n_frequent, medical_share, frequent_share (shares of
    n_alive; NaN if none alive), medical_latents, frequent_latents.
    """
    vocabulary = card_vocabulary("medical") if vocabulary is None else vocabulary
    sorted_vocabulary = sorted(vocabulary)
    if frequent is None:
        frequent = frequent_tokens(store, tokenizer)
    if isinstance(frequent, FrequentTokens):
        frequent = frequent.ids_N
    frequent_ids = set(torch.as_tensor(frequent).tolist())
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
            medical_memo[token_id] = is_medical_piece(
                piece(token_id), vocabulary, sorted_vocabulary
            )
        return medical_memo[token_id]

    medical_latents, frequent_latents = [], []
    for latent in alive:
        rows = [r for r in stats.top_index_FK[latent, :top_k].tolist() if r >= 0]
        if not rows:
            continue
        rows_N = torch.tensor(rows, dtype=torch.int64)
        ids = store.tokens_CT[store.context_N[rows_N].long(), store.position_N[rows_N].long()]
        ids = ids.tolist()
        if 2 * sum(medical(r) for r in rows) > len(rows):
            medical_latents.append(latent)
        if 2 * sum(i in frequent_ids for i in ids) > len(ids):
            frequent_latents.append(latent)
    n_alive = len(alive)
    share = (lambda n: n / n_alive) if n_alive else (lambda n: float("nan"))
    return {
        "n_alive": n_alive,
        "n_medical": len(medical_latents),
        "n_frequent": len(frequent_latents),
        "medical_share": share(len(medical_latents)),
        "frequent_share": share(len(frequent_latents)),
        "medical_latents": medical_latents,
        "frequent_latents": frequent_latents,
    }
