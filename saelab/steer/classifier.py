"""A topic classifier for steered text that never sees its topic's lexicon words.

docs/methods.md, "Cross-layer feature flow", step 7: the paper judges steered text with an
LLM; offline, saelab scores it twice. `topic_score` counts lexicon words, which repetition
of one topic word games. This classifier is the second opinion: a bag-of-words logistic
regression over the topics and "other", trained on Wikipedia paragraphs (the `broad`
corpus) labelled by the lexicons (distant supervision: a paragraph whose best lexicon
covers at least 3% of its words, three words or more, is that topic; a paragraph with no
lexicon word is "other"). Every lexicon word is removed from its input, at training and at
scoring, so it can only recognise a topic by the rest of the vocabulary: the context words
that come with the topic in real text. A text made only of lexicon words scores what the
empty text scores. It is trained on held-out text, never on the steered feature.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from saelab.steer.topics import load_lexicon, words

TOPICS = ("medicine", "weather", "sports", "cooking")
OTHER = "other"


class TopicClassifier(NamedTuple):
    """A fitted classifier. `classes` are the topics then "other"; `vocab` maps a word to
    its column; `masked` holds the lexicon words it never sees; `weight_CV`, `bias_C` are the
    logistic-regression parameters; `heldout_recall` maps each class to its recall on held-
    out labelled paragraphs (their mean is the balanced accuracy)."""

    classes: tuple[str, ...]
    vocab: dict[str, int]
    masked: frozenset[str]
    weight_CV: torch.Tensor
    bias_C: torch.Tensor
    heldout_recall: dict[str, float]


def label_paragraphs(
    texts: Sequence[str], lexicons: dict[str, set[str]], min_share: float = 0.03, min_hits: int = 3
) -> list[tuple[str, str]]:
    """(paragraph, class) pairs from `texts` split on newlines: a topic where its lexicon
    covers >= `min_share` of the words (and >= `min_hits` of them) and beats the others,
    "other" where no lexicon word occurs; ambiguous paragraphs and ones under 20 words are
    left out."""
    pairs = []
    for text in texts:
        for paragraph in text.split("\n"):
            ws = words(paragraph)
            if len(ws) < 20:
                continue
            hits = {topic: sum(w in lex for w in ws) for topic, lex in lexicons.items()}
            best = max(hits, key=hits.get)
            if hits[best] == 0:
                pairs.append((paragraph, OTHER))
            elif hits[best] >= min_hits and hits[best] / len(ws) >= min_share:
                pairs.append((paragraph, best))
    return pairs


def _bags(clf_vocab: dict[str, int], masked: frozenset[str], texts: Sequence[str]):
    """EmbeddingBag inputs: flat word ids, offsets, and per-word weights 1/n (each text's
    known, unmasked words weigh 1 in total; a text with none gives an empty bag)."""
    ids, offsets, weights = [], [], []
    for text in texts:
        offsets.append(len(ids))
        kept = [clf_vocab[w] for w in words(text) if w not in masked and w in clf_vocab]
        ids.extend(kept)
        weights.extend([1.0 / max(len(kept), 1)] * len(kept))
    return (
        torch.tensor(ids, dtype=torch.long),
        torch.tensor(offsets, dtype=torch.long),
        torch.tensor(weights, dtype=torch.float32),
    )


def _logits(clf: TopicClassifier, texts: Sequence[str]) -> torch.Tensor:
    ids, offsets, weights = _bags(clf.vocab, clf.masked, texts)
    bag_NC = torch.nn.functional.embedding_bag(
        ids, clf.weight_CV.T, offsets, mode="sum", per_sample_weights=weights
    )
    return bag_NC + clf.bias_C


def fit_topic_classifier(
    train: Sequence[tuple[str, str]],
    heldout: Sequence[tuple[str, str]],
    classes: Sequence[str],
    masked: set[str],
    max_vocab: int = 20_000,
    steps: int = 300,
    lr: float = 0.5,
    weight_decay: float = 1e-6,
    seed: int = 0,
) -> TopicClassifier:
    """Fit on labelled (text, class) pairs, classes weighted by inverse frequency so the
    rare topics count as much as "other"; full-batch Adam. The vocabulary is the
    `max_vocab` most frequent unmasked training words."""
    classes = tuple(classes)
    masked = frozenset(masked)
    counts = Counter(w for text, _ in train for w in words(text) if w not in masked)
    vocab = {w: i for i, (w, _) in enumerate(counts.most_common(max_vocab))}
    missing = sorted(set(classes) - {label for _, label in train})
    if missing:
        raise ValueError(f"no training paragraph for classes {missing}")
    generator = torch.Generator().manual_seed(seed)
    weight_CV = (0.01 * torch.randn(len(classes), len(vocab), generator=generator)).requires_grad_()
    bias_C = torch.zeros(len(classes), requires_grad=True)
    y_N = torch.tensor([classes.index(label) for _, label in train])
    class_weight_C = 1.0 / torch.bincount(y_N, minlength=len(classes)).float()
    bags = _bags(vocab, masked, [text for text, _ in train])
    optimizer = torch.optim.Adam([weight_CV, bias_C], lr=lr)
    for _ in range(steps):
        bag_NC = torch.nn.functional.embedding_bag(
            bags[0], weight_CV.T, bags[1], mode="sum", per_sample_weights=bags[2]
        )
        loss = torch.nn.functional.cross_entropy(bag_NC + bias_C, y_N, weight=class_weight_C)
        loss = loss + weight_decay * weight_CV.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    clf = TopicClassifier(classes, vocab, masked, weight_CV.detach(), bias_C.detach(), {})
    pred_N = _logits(clf, [text for text, _ in heldout]).argmax(1).numpy()
    truth_N = np.array([classes.index(label) for _, label in heldout])
    recall = {c: float((pred_N[truth_N == i] == i).mean()) for i, c in enumerate(classes)}
    return clf._replace(heldout_recall=recall)


def train_topic_classifier(
    topics: Sequence[str] = TOPICS,
    corpus: str = "broad",
    other_per_topic: int = 3,
    seed: int = 0,
    **options,
) -> TopicClassifier:
    """The default classifier: `topics` lexicons (`data/topics/`) label `corpus` paragraphs,
    trained on its train split, recall measured on its test split. "other" is subsampled to
    `other_per_topic` times the largest topic: on `broad` it outnumbers the topics 15 to 1,
    and the class weights already balance the loss."""
    from saelab.data import load_corpus

    lexicons = {topic: load_lexicon(topic) for topic in topics}
    masked = set().union(*lexicons.values())
    train = label_paragraphs(load_corpus(corpus, split="train"), lexicons)
    sizes = Counter(label for _, label in train)
    keep_other = other_per_topic * max(sizes[t] for t in topics)
    others = [i for i, (_, label) in enumerate(train) if label == OTHER]
    if len(others) > keep_other:
        rng = np.random.default_rng(seed)
        dropped = set(rng.choice(others, len(others) - keep_other, replace=False).tolist())
        train = [pair for i, pair in enumerate(train) if i not in dropped]
    heldout = label_paragraphs(load_corpus(corpus, split="test"), lexicons)
    return fit_topic_classifier(train, heldout, [*topics, OTHER], masked, seed=seed, **options)


def topic_probability(clf: TopicClassifier, texts: Sequence[str], topic: str) -> np.ndarray:
    """P(`topic` | text) for each text `[N]`, from the softmax over the classifier's classes."""
    if topic not in clf.classes:
        raise ValueError(f"the classifier knows {clf.classes}, not {topic!r}")
    with torch.no_grad():
        probs_NC = _logits(clf, list(texts)).softmax(-1)
    return probs_NC[:, clf.classes.index(topic)].numpy()
