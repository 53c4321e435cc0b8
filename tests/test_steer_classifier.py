"""The topic classifier of steered text: distant labels, masking of lexicon words, and its
column in the sweep."""

import numpy as np
import pytest

from saelab import steer

LEXICONS = {"weather": {"rain", "storm", "wind"}, "sports": {"goal", "team", "match"}}
FILLER = "the a of and to in is it was for on with as by at from this that".split()


def paragraph(rng, topic_words=(), context_words=(), n=30):
    """n words: filler, plus the topic's lexicon and context words at fixed counts."""
    ws = list(rng.choice(FILLER, n - len(topic_words) - len(context_words)))
    ws += list(topic_words) + list(context_words)
    rng.shuffle(ws)
    return " ".join(ws)


def corpus(seed, n_each=40):
    """Weather paragraphs (rain / storm + 'umbrella cloudy'), sports paragraphs (goal / team
    + 'stadium referee'), and 'other' ones with neither; one paragraph a line."""
    rng = np.random.default_rng(seed)
    weather = ["rain", "storm", "wind"] * 2, ["umbrella", "cloudy"] * 2
    sports = ["goal", "team", "match"] * 2, ["stadium", "referee"] * 2
    lines = [paragraph(rng, *weather) for _ in range(n_each)]
    lines += [paragraph(rng, *sports) for _ in range(n_each)]
    lines += [paragraph(rng, (), ["parliament", "law"] * 2) for _ in range(2 * n_each)]
    return ["\n".join(lines[i::4]) for i in range(4)]  # four documents


def test_label_paragraphs_by_hand():
    texts = [
        "rain storm wind " + "x " * 30,  # 3 weather words of 33: weather
        "rain " + "x " * 40,  # one word: too few hits, left out
        "short text with rain",  # under 20 words: left out
        "y " * 25,  # no lexicon word: other
        "goal team match rain " + "x " * 20,  # 3 sports vs 1 weather: sports
    ]
    pairs = steer.label_paragraphs(["\n".join(texts)], LEXICONS)
    assert [label for _, label in pairs] == ["weather", "other", "sports"]


def test_classifier_learns_context_words_and_never_sees_lexicon_words():
    lexicons = LEXICONS
    masked = set().union(*lexicons.values())
    train = steer.label_paragraphs(corpus(0), lexicons)
    heldout = steer.label_paragraphs(corpus(1), lexicons)
    assert {label for _, label in train} == {"weather", "sports", "other"}
    clf = steer.fit_topic_classifier(train, heldout, ["weather", "sports", "other"], masked)
    assert min(clf.heldout_recall.values()) == 1.0
    assert not masked & set(clf.vocab)
    texts = [
        "an umbrella and a cloudy day",
        "the referee left the stadium",
        "rain rain storm wind rain",  # lexicon words only: scores what the empty text scores
        "",
    ]
    p_weather = steer.topic_probability(clf, texts, "weather")
    p_sports = steer.topic_probability(clf, texts, "sports")
    assert p_weather[0] > 0.8 and p_sports[1] > 0.8
    assert p_weather[1] < 0.2 and p_sports[0] < 0.2
    assert p_weather[2] == pytest.approx(p_weather[3], abs=1e-7)
    assert p_weather[2] < 0.6
    with pytest.raises(ValueError, match="cooking"):
        steer.topic_probability(clf, texts, "cooking")
    with pytest.raises(ValueError, match="no training paragraph"):
        steer.fit_topic_classifier(train, heldout, ["weather", "cooking", "other"], masked)


def test_sweep_scores_with_the_classifier(stories):
    lexicons = {"weather": {"rain", "sun"}, "sports": {"ball", "game"}}
    train = steer.label_paragraphs(corpus(0), LEXICONS)
    clf = steer.fit_topic_classifier(train, train, ["weather", "sports", "other"], set())
    prompts = ["Once upon a time", "The little dog"]
    table = steer.sweep(
        stories,
        prompts,
        {},
        [1.0],
        lexicons["weather"],
        6,
        n_samples=2,
        classifier=clf,
        topic="weather",
    )
    expected = steer.topic_probability(clf, list(table.text), "weather")
    np.testing.assert_allclose(table.classifier_score.to_numpy(), expected, rtol=0, atol=0)
    summary = steer.summarize_sweep(table)
    assert summary.classifier_score.iloc[0] == pytest.approx(expected.mean(), abs=1e-7)
    with pytest.raises(ValueError, match="topic="):
        steer.sweep(stories, prompts, {}, [1.0], lexicons["weather"], 6, classifier=clf)
