"""Corpora from the dataset cards in `data/corpora.toml`, deterministic splits, packing.

A record goes to `test` when a hash of `source:id` falls under the card's `test_percent`,
so train and test never overlap whatever subset or order is read. Records come back in
hash order (a fixed shuffle), so the first N tokens of a corpus mix all its sources.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path

import torch

from saelab.paths import data_dir, shared_dir

SPLITS = ("train", "test", "all")


def _cards() -> dict:
    return tomllib.loads((data_dir() / "corpora.toml").read_text())


def corpus_names() -> list[str]:
    return list(_cards())


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
        where = path if path is not None else "$SAELAB_SHARED (not set, and no ../shared beside the checkout)"
        raise FileNotFoundError(
            f"corpus source {name!r}: no local file at {where}, and the hub dataset {source.get('hub')!r} "
            f"could not be loaded ({type(err).__name__}: {err})"
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


def _medical_vocab() -> set[str]:
    lines = (data_dir() / "medical_terms.txt").read_text().splitlines()
    return {w.strip().lower() for w in lines if w.strip() and not w.startswith("#")}


def is_medical(text: str, threshold: float = 0.006) -> bool:
    """Keyword density of `medical_terms.txt` in the first 3000 characters above `threshold`."""
    words = re.findall(r"[a-z]+", text[:3000].lower())
    vocab = _medical_vocab()
    return bool(words) and sum(w in vocab for w in words) / len(words) > threshold


def load_corpus(name: str, split: str = "train", max_texts: int | None = None) -> list[str]:
    """Texts of a corpus card (`medical`, `broad`, `broad_nonmedical`), a `.jsonl` path
    (field `text`), or a hub dataset id; `split` in {"train", "test", "all"}."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    cards = _cards()
    if name in cards:
        card = cards[name]
        sources = cards[card["same_as"]]["sources"] if "same_as" in card else card["sources"]
        rows = [row for source in sources for row in _read_source(source)]
        test_share = card.get("test_percent", 10) / 100
    elif name.endswith(".jsonl") or Path(name).is_file():
        path = Path(name)
        if not path.exists():
            raise FileNotFoundError(f"corpus file {path} does not exist")
        rows = _read_source({"name": path.stem, "file": str(path.resolve()), "format": "jsonl", "text": ["text"]})
        card, test_share = {}, 0.1
    elif "/" in name:
        rows = _read_hub({"name": name, "hub": name, "text": ["text"]})
        card, test_share = {}, 0.1
    else:
        raise ValueError(f"unknown corpus {name!r}: use one of {corpus_names()}, a .jsonl path or a hub dataset id")
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
    if card.get("exclude_if_medical"):
        texts = [t for t in texts if not is_medical(t)]
    if not texts:
        raise ValueError(f"corpus {name!r} split {split!r} is empty")
    return texts[:max_texts] if max_texts else texts


def pack(tokenizer, texts: list[str], ctx_len: int = 128, max_tokens: int | None = None) -> torch.Tensor:
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
        raise ValueError(f"the texts hold {len(stream)} tokens, fewer than one context of {ctx_len}")
    body = torch.tensor(stream[: n_ctx * piece], dtype=torch.long).view(n_ctx, piece)
    return torch.cat([torch.full((n_ctx, 1), bos, dtype=torch.long), body], dim=1)


def load_prompts(name: str = "medical") -> list[dict]:
    """A prompt set from `data/prompts/{name}.jsonl`: dicts with `id`, `category`, `text`."""
    path = data_dir() / "prompts" / f"{name}.jsonl"
    if not path.exists():
        known = sorted(p.stem for p in (data_dir() / "prompts").glob("*.jsonl"))
        raise FileNotFoundError(f"no prompt set {name!r}; known: {known}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
