import json
import re
from collections import Counter

import pytest

import saelab
from saelab.data import common_words, is_medical, load_corpus, pack, token_str, vocabulary
from saelab.paths import shared_dir


def test_splits_are_disjoint_and_deterministic():
    train, test = load_corpus("medical", "train"), load_corpus("medical", "test")
    assert not set(train) & set(test)
    # ~10% of records go to test, by hash of the record id
    assert 0.07 < len(test) / (len(train) + len(test)) < 0.13
    assert load_corpus("medical", "test") == test


def test_broad_nonmedical_filters_medical_articles():
    broad, nonmed = load_corpus("broad", "test"), load_corpus("broad_nonmedical", "test")
    assert set(nonmed) < set(broad)
    removed = set(broad) - set(nonmed)
    assert removed and all(saelab.data.is_medical(t) for t in removed)


def test_pack_starts_every_context_with_bos(stories, medical_texts):
    tok = stories.tokenizer
    ids = pack(tok, medical_texts[:20], ctx_len=32)
    assert ids.shape[1] == 32 and (ids[:, 0] == tok.bos_token_id).all()
    # the stream is the documents' tokens joined by EOS, nothing lost in the middle
    first = tok(medical_texts[0], add_special_tokens=False)["input_ids"]
    flat = ids[:, 1:].reshape(-1).tolist()
    assert flat[: len(first)] == first[: len(flat)]


def test_bad_corpus_inputs(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus"):
        load_corpus("no_such_corpus")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(str(empty))
    with pytest.raises(ValueError, match="empty"):
        pack(None, [])


def test_medical_prompt_set():
    prompts = saelab.data.load_prompts("medical")
    assert len(prompts) >= 30
    assert {p["category"] for p in prompts} == {"symptom", "drug", "diagnosis", "procedure"}
    assert len({p["text"] for p in prompts}) == len(prompts)
    with pytest.raises(FileNotFoundError, match="no prompt set"):
        saelab.data.load_prompts("veterinary")


def test_missing_local_corpus_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("SAELAB_SHARED", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    where = r"no local file at .*medquad\.jsonl.*lavita/MedQuAD"
    with pytest.raises(FileNotFoundError, match=where):
        load_corpus("medical")


def _old_words(text: str) -> set[str]:
    return {w for w in re.split(r"[^a-z]+", text.lower()) if len(w) >= 4}


def test_vocabulary_is_the_old_reading_of_the_files():
    """The card-driven vocabulary equals the old logic: PubMedQA MESHES and MedQuAD focus read
    straight from the json files, minus the 1000 most frequent words of 2000 broad texts."""
    folder = shared_dir() / "corpora" / "medical"
    raw: set[str] = set()
    for record in json.loads((folder / "pubmedqa_pqal.json").read_text()).values():
        for heading in record.get("MESHES") or []:
            raw |= _old_words(str(heading))
    with (folder / "medquad.jsonl").open() as handle:
        for line in handle:
            if line.strip():
                raw |= _old_words(str(json.loads(line).get("focus") or ""))
    counts: Counter[str] = Counter()
    for text in load_corpus("broad", split="train", max_texts=2000):
        counts.update(w for w in re.split(r"[^a-z]+", text.lower()) if len(w) >= 4)
    common = {w for w, _ in counts.most_common(1000)}

    assert common_words("broad", top_k=1000) == common
    assert vocabulary("medical", exclude_common=0) == raw
    vocab = vocabulary("medical")
    assert vocab == raw - common
    assert len(vocab) > 1000
    assert {"leukemia", "apoptosis", "mitochondria"} <= vocab
    assert all(len(w) >= 4 and w.isalpha() and w == w.lower() for w in vocab)
    # MeSH's "Time Factors", "Middle Aged": in the raw set, gone once common words are removed
    assert {"time", "middle"} <= raw and not {"time", "middle"} & vocab
    assert vocabulary("medical", exclude_common=10) == raw - {w for w, _ in counts.most_common(10)}
    with pytest.raises(ValueError, match="no vocabulary 'broad'.*medical"):
        vocabulary("broad")


def test_is_medical_is_the_cards_keyword_density():
    """More than 0.6% of the words must be keywords (medical_terms.txt, named by the
    broad_nonmedical card): 3 keywords in 500 words (~2000 characters) is not medical, 4 is."""
    filler = ["cat"] * 497
    assert not is_medical(" ".join(["patient"] * 3 + filler))
    assert is_medical(" ".join(["patient"] * 4 + filler[:-1]))
    assert is_medical(" ".join(["patient"] * 2 + filler[:-1]), threshold=0.002)
    # only the first 3000 characters count: keywords after them change nothing
    assert not is_medical(" ".join(["river"] * 600) + " patient" * 50)


def test_token_str_shows_the_word_start_marker_as_a_space(stories):
    tok = stories.tokenizer
    ids = tok("Once upon a time", add_special_tokens=False)["input_ids"]
    assert [token_str(tok, i) for i in ids] == [
        p.replace("▁", " ") for p in tok.convert_ids_to_tokens(ids)
    ]
    assert "".join(token_str(tok, i) for i in ids).strip() == "Once upon a time"
