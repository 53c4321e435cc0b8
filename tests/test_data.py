import pytest

import saelab
from saelab.data import load_corpus, pack


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
    with pytest.raises(FileNotFoundError, match=r"no local file at .*medquad\.jsonl.*lavita/MedQuAD"):
        load_corpus("medical")
