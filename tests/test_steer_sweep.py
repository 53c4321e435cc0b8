"""Scoring steered text (saelab.steer): text scores and lexicons, the sweep table and its
delta CE, bootstrap summaries, the topic feature."""

import math
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import HOOK

import saelab
from saelab import steer

PROMPT = "Once upon a time"


def test_text_scores_and_lexicons_by_hand():
    lexicon = {"doctor", "patient", "medicine"}
    assert steer.topic_score("The Doctor gave the patient medicine.", lexicon) == 0.5  # 3 of 6
    assert steer.topic_score("Doctor's orders", lexicon) == pytest.approx(1 / 3)  # doctor, s
    assert math.isnan(steer.topic_score("...", lexicon))
    assert steer.distinct_2("the cat saw the cat") == 0.75  # (the cat) twice in 4 bigrams
    assert steer.distinct_2("a b c d") == 1.0 and math.isnan(steer.distinct_2("one"))
    loop, varied = "the cat " * 25, "qzmx vbnw plok rtyu asdf ghjk"
    assert steer.compression_ratio(loop) == len(loop) / len(zlib.compress(loop.encode(), 9))
    assert steer.compression_ratio(loop) > 5 > 1 > steer.compression_ratio(varied)
    for name in ("medicine", "weather", "sports", "cooking"):
        words = steer.load_lexicon(name)
        assert 40 <= len(words) <= 80 and all(w.isalpha() and w.islower() for w in words)
    assert "doctor" in steer.load_lexicon("medicine") and "rain" in steer.load_lexicon("weather")
    with pytest.raises(FileNotFoundError, match="cooking"):
        steer.load_lexicon("astronomy")


def test_sweep_table_and_delta_ce(stories):
    sae = saelab.make_sae("relu", 64, 32, seed=1)
    sae.cfg.hookpoint = HOOK
    plans = {"f3": lambda s: [steer.promote(sae, 3, s)], "off3": [steer.suppress(sae, 3, 0.0)]}
    prompts = [PROMPT, "The little dog"]
    table = steer.sweep(stories, prompts, plans, [0.0, 30.0], {"the", "dog"}, 6, n_samples=2)
    assert len(table) == (1 + 2 + 1) * 2 * 2
    base = table[table.plan == "unsteered"]
    assert base.groupby("prompt_id").delta_ce.mean().abs().max() < 1e-12
    zero = table[(table.plan == "f3") & (table.strength == 0.0)]
    assert list(zero.text) == list(base.text) and list(zero.delta_ce) == list(base.delta_ce)
    assert table[table.plan == "off3"].strength.isna().all()
    strong = table[(table.plan == "f3") & (table.strength == 30.0)]
    assert list(strong.text) != list(base.text) and strong.delta_ce.abs().max() > 0
    # ce by hand: the plain HF module, float64 cross-entropy of the regenerated sample
    row = table[(table.plan == "f3") & (table.strength == 30.0)].iloc[3]
    ids_1T, samples = steer.generate_ids(
        stories, prompts[row.prompt_id], plans["f3"](30.0), 6, do_sample=True, n_samples=2
    )
    ids = samples[row["sample"]]
    logits = stories._module(ids[None]).logits[0].detach().double()
    start = ids_1T.shape[1]
    ce = torch.nn.functional.cross_entropy(logits[start - 1 : -1], ids[start:]).item()
    mean_base = base[base.prompt_id == row.prompt_id].ce.mean()
    assert row.ce == pytest.approx(ce, abs=1e-5)
    assert row.delta_ce == pytest.approx(ce - mean_base, abs=1e-5)
    assert row.text == stories.tokenizer.decode(ids[start:], skip_special_tokens=True)
    with pytest.raises(ValueError, match="baseline"):
        steer.sweep(stories, prompts, {"unsteered": []}, [1.0], {"a"})


def fake_table(values_P, n_samples=1, plan="p", strength=1.0):
    """A sweep-like table: prompt p's samples average to values_P[p] (topic) and -values_P[p]."""
    jitter = [0.1 * (i - (n_samples - 1) / 2) for i in range(n_samples)]
    cols = ["plan", "strength", "prompt_id", "sample", "topic_score", "delta_ce", "distinct_2"]
    rows = [
        (plan, strength, p, i, v + j, -v, 1.0)
        for p, v in enumerate(values_P)
        for i, j in enumerate(jitter)
    ]
    return pd.DataFrame(rows, columns=cols).assign(compression_ratio=float("nan"))


def test_summarize_sweep_bootstrap_intervals():
    # two prompts: resamples give a, (a+b)/2 or b with odds 1/4, 1/2, 1/4, so the 95%
    # percentile interval is [a, b] exactly
    out = steer.summarize_sweep(fake_table([0.2, 0.6], n_samples=3)).iloc[0]
    assert (out.n_prompts, out.n_samples) == (2, 6)
    assert out.topic_score == pytest.approx(0.4)
    assert (out.topic_score_lo, out.topic_score_hi) == pytest.approx((0.2, 0.6))
    assert (out.delta_ce_lo, out.delta_ce_hi) == pytest.approx((-0.6, -0.2))
    assert out.distinct_2_lo == out.distinct_2_hi == 1.0
    assert math.isnan(out.compression_ratio)
    # many prompts: the percentile interval of a mean is ~ ±1.96 · std / sqrt(n) (CLT)
    rng = np.random.default_rng(0)
    widths = []
    for n_prompts in (8, 400):
        values_P = rng.normal(0.3, 0.1, n_prompts)
        table = fake_table(values_P)
        table = pd.concat([table, fake_table([0.5], plan="fixed", strength=float("nan"))])
        out = steer.summarize_sweep(table, n_boot=4000, seed=1)
        row = out[out.plan == "p"].iloc[0]
        assert row.topic_score == pytest.approx(values_P.mean())
        assert row.topic_score_lo < row.topic_score < row.topic_score_hi
        widths.append(row.topic_score_hi - row.topic_score_lo)
        fixed = out[out.plan == "fixed"].iloc[0]  # a NaN strength keeps its own row
        assert math.isnan(fixed.strength) and fixed.topic_score_lo == fixed.topic_score_hi == 0.5
    assert widths[1] == pytest.approx(2 * 1.96 * values_P.std() / math.sqrt(400), rel=0.1)
    assert widths[1] < widths[0] / 3  # ~1/sqrt(50) expected


def test_topic_feature_is_the_one_promoting_the_lexicon(stories):
    """Plant a decoder row along one token's unembedding: it promotes that token most."""
    from saelab.features import logit_effects

    sae = saelab.make_sae("topk", 64, 32, k=2, seed=0)
    W_U = stories._module.get_output_embeddings().weight.detach()
    tokenizer = stories.tokenizer
    target = next(
        i
        for i in range(300, 512)
        if steer.words(tokenizer.decode([i])) and len(steer.words(tokenizer.decode([i]))[0]) > 3
    )
    word = steer.words(tokenizer.decode([target]))[0]
    with torch.no_grad():
        sae.W_dec_FD[7] = W_U[target] / W_U[target].norm()
    ids = steer.promoted_token_ids(sae, stories, top_k=5)
    for f in (0, 7, 31):  # the same order as logit_effects computes one feature at a time
        assert logit_effects(sae, stories, f, top_k=5).promoted == [
            saelab.data.token_str(tokenizer, i) for i in ids[f].tolist()
        ]
    feature, score = steer.topic_feature(sae, stories, {word}, top_k=5)
    assert feature == 7 and score >= 0.2
    assert steer.lexicon_scores(sae, stories, {"zzzz"}, top_k=5).sum() == 0
