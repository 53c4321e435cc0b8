"""Corpora and vocabularies from the dataset cards in `data/corpora.toml`; splits, packing,
token pieces.

A record goes to `test` when a hash of `source:id` falls under the card's `test_percent`,
so train and test never overlap whatever subset or order is read. Records come back in
hash order (a fixed shuffle), so the first N tokens of a corpus mix all its sources.
Vocabularies (`vocabulary`) are read from record fields of a card's sources through the
same readers, so a shared file and the hub give the same words.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections import Counter
from functools import lru_cache
from pathlib import Path

import torch

from saelab.paths import data_dir, shared_dir

SPLITS = ("train", "test", "all")
WORD_START_MARKERS = ("▁", "Ġ")  # SentencePiece, byte-level BPE: "a new word starts here"
MIN_WORD_LEN = 4  # vocabulary words (and word-pieces matched against them) are >= 4 letters
COMMON_WORDS_TEXTS = 2000  # texts counted for `common_words` (broad: ~2M words of Wikipedia)
KEYWORD_CHARS = 3000  # `exclude_keywords` density is measured on a text's first 3000 characters


def _cards() -> dict:
    return tomllib.loads((data_dir() / "corpora.toml").read_text())


def corpus_names() -> list[str]:
    return list(_cards())


def _sources(cards: dict, card: dict) -> list[dict]:
    return cards[card["same_as"]]["sources"] if "same_as" in card else card["sources"]


def _hash01(key: str) -> float:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64


def _record_text(record: dict, fields: list[str]) -> str:
    parts = []
    for field in fields:
        value = record.get(field)
        if isinstance(value, list):
            parts.extend(str(v) for v in value)
        elif value is not None:
            parts.append(str(value))
    return "\n".join(p.strip() for p in parts if str(p).strip())


def _read_source(source: dict) -> list[tuple[str, str]]:
    """(record id, text) pairs of one card source, from the shared file or the hub."""
    shared = shared_dir()
    path = shared / source["file"] if shared else None
    name = source["name"]
    if path is not None and path.exists():
        if source["format"] == "json_dict":
            items = json.loads(path.read_text()).items()
        else:
            with path.open() as handle:
                items = [(None, json.loads(line)) for line in handle if line.strip()]
        rows = []
        for line_no, (key, record) in enumerate(items):
            rid = key if key is not None else record.get(source.get("id", ""), line_no)
            rows.append((f"{name}:{rid}", _record_text(record, source["text"])))
        return rows
    try:
        return _read_hub(source)
    except Exception as err:  # offline, or the hub refuses: say where we looked first
        where = (
            path
            if path is not None
            else ("$SAELAB_SHARED (not set, and no ../shared beside the checkout)")
        )
        raise FileNotFoundError(
            f"corpus source {name!r}: no local file at {where}, and the hub dataset "
            f"{source.get('hub')!r} could not be loaded ({type(err).__name__}: {err})"
        ) from err


def _read_hub(source: dict) -> list[tuple[str, str]]:
    """The hub path, for users with network access (not reachable on the offline CI)."""
    from datasets import load_dataset

    dataset = load_dataset(source["hub"], split="train")
    key = source.get("id")
    return [
        (f"{source['name']}:{row[key] if key else i}", _record_text(row, source["text"]))
        for i, row in enumerate(dataset)
    ]


@lru_cache(maxsize=4)
def _keywords(file: str) -> frozenset[str]:
    """A keyword list in `data/` (one word a line, `#` comments), lower-cased."""
    lines = (data_dir() / file).read_text().splitlines()
    return frozenset(w.strip().lower() for w in lines if w.strip() and not w.startswith("#"))


def _keyword_dense(text: str, words: frozenset[str], threshold: float) -> bool:
    found = re.findall(r"[a-z]+", text[:KEYWORD_CHARS].lower())
    return bool(found) and sum(w in words for w in found) / len(found) > threshold


def is_medical(text: str, threshold: float | None = None) -> bool:
    """Whether `broad_nonmedical` drops `text`: the density of its card's `exclude_keywords`
    among the words of the first 3000 characters is above `threshold` (default: the card's
    `exclude_density`)."""
    card = _cards()["broad_nonmedical"]
    threshold = card["exclude_density"] if threshold is None else threshold
    return _keyword_dense(text, _keywords(card["exclude_keywords"]), threshold)


def load_corpus(name: str, split: str = "train", max_texts: int | None = None) -> list[str]:
    """Texts of a corpus card (`medical`, `broad`, `broad_nonmedical`), a `.jsonl` path
    (field `text`), or a hub dataset id; `split` in {"train", "test", "all"}."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    cards = _cards()
    if name in cards:
        card = cards[name]
        rows = [row for source in _sources(cards, card) for row in _read_source(source)]
        test_share = card.get("test_percent", 10) / 100
    elif name.endswith(".jsonl") or Path(name).is_file():
        path = Path(name)
        if not path.exists():
            raise FileNotFoundError(f"corpus file {path} does not exist")
        rows = _read_source(
            {"name": path.stem, "file": str(path.resolve()), "format": "jsonl", "text": ["text"]}
        )
        card, test_share = {}, 0.1
    elif "/" in name:
        rows = _read_hub({"name": name, "hub": name, "text": ["text"]})
        card, test_share = {}, 0.1
    else:
        raise ValueError(
            f"unknown corpus {name!r}: use one of {corpus_names()}, a .jsonl path "
            "or a hub dataset id"
        )
    # MedQuAD repeats some answers under several question ids: keep each text once (under
    # its first id) so no text lands in both train and test.
    seen: set[str] = set()
    keyed = []
    for rid, text in rows:
        if text.strip() and text not in seen:
            seen.add(text)
            keyed.append((_hash01(rid), text))
    if split == "train":
        keyed = [(h, t) for h, t in keyed if h >= test_share]
    elif split == "test":
        keyed = [(h, t) for h, t in keyed if h < test_share]
    # Rescale the hash inside the split so the order is a fresh shuffle of it.
    texts = [t for _, t in sorted(keyed, key=lambda kt: _hash01(f"order:{kt[0]}"))]
    if "exclude_keywords" in card:
        words = _keywords(card["exclude_keywords"])
        texts = [t for t in texts if not _keyword_dense(t, words, card["exclude_density"])]
    if not texts:
        raise ValueError(f"corpus {name!r} split {split!r} is empty")
    return texts[:max_texts] if max_texts else texts


def _words(text: str) -> list[str]:
    """Lower-case runs of letters at least `MIN_WORD_LEN` long, in order."""
    return [w for w in re.split(r"[^a-z]+", text.lower()) if len(w) >= MIN_WORD_LEN]


@lru_cache(maxsize=4)
def _word_counts(corpus: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in load_corpus(corpus, split="train", max_texts=COMMON_WORDS_TEXTS):
        counts.update(_words(text))
    return counts


@lru_cache(maxsize=8)
def common_words(corpus: str = "broad", top_k: int = 1000) -> frozenset[str]:
    """The `top_k` most frequent words (letters only, >= 4 long) of the first
    `COMMON_WORDS_TEXTS` texts of `corpus`'s train split."""
    return frozenset(w for w, _ in _word_counts(corpus).most_common(top_k))


@lru_cache(maxsize=8)
def _vocabulary_words(name: str, shared: str) -> frozenset[str]:
    """The raw words of card `name`'s vocabulary (`shared` only keys the cache)."""
    cards = _cards()
    if "vocabulary" not in cards.get(name, {}):
        known = [n for n, card in cards.items() if "vocabulary" in card]
        raise ValueError(f"no vocabulary {name!r}: the cards with one are {known}")
    by_name = {source["name"]: source for source in _sources(cards, cards[name])}
    words: set[str] = set()
    for entry in cards[name]["vocabulary"]["sources"]:
        for _, text in _read_source({**by_name[entry["source"]], "text": entry["fields"]}):
            words.update(_words(text))
    return frozenset(words)


def vocabulary(name: str = "medical", exclude_common: int | None = None) -> set[str]:
    """Lower-case words (letters only, >= 4 long) of the record fields that card `name`'s
    `[name.vocabulary]` table names (medical: PubMedQA MeSH headings and MedQuAD foci),
    minus the `exclude_common` most frequent words of its `common_words_of` corpus
    (default: the card's `exclude_common`; 0 gives the raw set).

    docs/methods.md, "Concept alignment": the exclusion matters, since MeSH headings such as
    "Time Factors" or "Middle Aged" put "time" and "middle" in the raw set.
    """
    words = set(_vocabulary_words(name, str(shared_dir())))
    spec = _cards()[name]["vocabulary"]
    top_k = spec.get("exclude_common", 0) if exclude_common is None else exclude_common
    return words - common_words(spec["common_words_of"], top_k) if top_k else words


def token_str(tokenizer, token_id: int) -> str:
    """A readable token piece: the tokenizer's piece with the word-start marker as a space."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    for marker in WORD_START_MARKERS:
        piece = piece.replace(marker, " ")
    return piece.replace("Ċ", "\n")


def pack(
    tokenizer, texts: list[str], ctx_len: int = 128, max_tokens: int | None = None
) -> torch.Tensor:
    """Tokenise `texts` and pack them into contexts `[N, ctx_len]`, each starting with BOS.

    Documents are joined by EOS into one stream and cut into `ctx_len - 1` token pieces,
    so no padding is wasted. Tokenisation stops once `max_tokens` tokens are packed.
    """
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError("cannot pack an empty list of texts")
    if ctx_len < 2:
        raise ValueError(f"ctx_len must be at least 2, got {ctx_len}")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else bos
    piece = ctx_len - 1
    wanted = None if max_tokens is None else -(-max_tokens // ctx_len) * piece
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        stream.append(eos)
        if wanted is not None and len(stream) >= wanted:
            break
    n_ctx = len(stream) // piece if wanted is None else min(len(stream), wanted) // piece
    if n_ctx == 0:
        raise ValueError(
            f"the texts hold {len(stream)} tokens, fewer than one context of {ctx_len}"
        )
    body = torch.tensor(stream[: n_ctx * piece], dtype=torch.long).view(n_ctx, piece)
    return torch.cat([torch.full((n_ctx, 1), bos, dtype=torch.long), body], dim=1)


def load_prompts(name: str = "medical") -> list[dict]:
    """A prompt set from `data/prompts/{name}.jsonl`: dicts with `id`, `category`, `text`."""
    path = data_dir() / "prompts" / f"{name}.jsonl"
    if not path.exists():
        known = sorted(p.stem for p in (data_dir() / "prompts").glob("*.jsonl"))
        raise FileNotFoundError(f"no prompt set {name!r}; known: {known}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
