"""Steered generation and its offline evaluation (docs/methods.md, "Cross-layer feature flow",
steps 6 and 7; Laptev et al., arXiv 2502.03032).

    from saelab import steer
    typical = steer.typical_activation(sae, store)              # [F] mean non-zero code
    plan = [steer.promote(sae, 1234, strength=4.0, typical=typical)]
    generate = steer.generate  # the paper's sampling setting:
    texts = generate(model, "I think ", plan, do_sample=True, top_p=0.7, temperature=1.27)
    plan = steer.from_graph(graph, saes, 4.0, schedule="cumulative", layer=12)
    table = steer.sweep(model, prompts, {"graph": lambda s: steer.from_graph(graph, saes, s)},
                        strengths=[0, 2, 4, 8], lexicon="medicine")
    steer.summarize_sweep(table)
    clf = steer.train_topic_classifier()   # never sees lexicon words; add classifier=clf to sweep

Not imported by `import saelab` (it imports pandas); `from saelab import steer`.
"""

from saelab.steer.classifier import (
    TopicClassifier,
    fit_topic_classifier,
    label_paragraphs,
    topic_probability,
    train_topic_classifier,
)
from saelab.steer.decode import generate, generate_ids, prompt_ids
from saelab.steer.plan import (
    SCHEDULES,
    SteeringTerm,
    from_graph,
    layer_strengths,
    plan_edits,
    promote,
    random_control,
    suppress,
    typical_activation,
    unit_direction,
)
from saelab.steer.sweep import METRICS, generated_ce, summarize_sweep, sweep
from saelab.steer.topics import (
    compression_ratio,
    distinct_2,
    lexicon_scores,
    load_lexicon,
    promoted_token_ids,
    topic_feature,
    topic_score,
    words,
)

__all__ = [
    "METRICS",
    "SCHEDULES",
    "SteeringTerm",
    "TopicClassifier",
    "fit_topic_classifier",
    "label_paragraphs",
    "topic_probability",
    "train_topic_classifier",
    "compression_ratio",
    "distinct_2",
    "from_graph",
    "generate",
    "generate_ids",
    "generated_ce",
    "layer_strengths",
    "lexicon_scores",
    "load_lexicon",
    "plan_edits",
    "promote",
    "promoted_token_ids",
    "prompt_ids",
    "random_control",
    "summarize_sweep",
    "suppress",
    "sweep",
    "topic_feature",
    "topic_score",
    "typical_activation",
    "unit_direction",
    "words",
]
