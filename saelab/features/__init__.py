"""Per-latent views of a trained SAE: statistics, top contexts, quantile samples, logit
effects, concepts, decoder geometry, latents on a prompt, finding a latent by its top tokens
(one module each) and `FeatureIndex`, which indexes a store once for a dashboard.

Everything streams over an `ActivationStore` batch by batch, so no dense `[N, F]` code
matrix is ever held. A latent fires on a token when its code is non-zero
(`saelab.sae.fires`). Token strings use the tokenizer's pieces with the word-start marker
shown as a space (`saelab.data.token_str`); vocabularies come from the dataset cards
(`saelab.data.vocabulary`).
"""

from saelab.features.codes import (
    LatentCodes,
    SparseCodes,
    codes_at,
    latent_codes,
    sparse_codes,
    stats_from_codes,
)
from saelab.features.concepts import (
    FrequentTokens,
    concept_alignment,
    frequent_tokens,
    is_medical_piece,
    vocabulary_shares,
    word_at,
)
from saelab.features.contexts import (
    Context,
    context_window,
    contexts_at,
    row_lookup,
    special_ids,
    top_contexts,
    top_token_ids,
)
from saelab.features.dashboard import FeatureIndex, LatentView, QuantileContexts
from saelab.features.geometry import (
    DecoderSimilarity,
    Neighbour,
    Redundancy,
    decoder_redundancy,
    decoder_similarity,
    nearest_features,
)
from saelab.features.logits import LogitEffects, logit_effects, logit_histogram, logit_vector
from saelab.features.prompt import (
    PromptCodes,
    TokenLatents,
    latents_on_text,
    prompt_codes,
    rank_latents,
)
from saelab.features.samples import QuantileBin, quantile_samples
from saelab.features.search import (
    alive_latents,
    highest_share_latent,
    informative_latent,
    matching_pieces,
    search_top_tokens,
)
from saelab.features.stats import (
    FeatureStats,
    Histogram,
    feature_stats,
    histogram_of,
    latent_histogram,
)

__all__ = [
    "Context",
    "DecoderSimilarity",
    "FeatureIndex",
    "FeatureStats",
    "FrequentTokens",
    "Histogram",
    "LatentCodes",
    "LatentView",
    "LogitEffects",
    "Neighbour",
    "PromptCodes",
    "QuantileBin",
    "QuantileContexts",
    "Redundancy",
    "SparseCodes",
    "TokenLatents",
    "alive_latents",
    "codes_at",
    "concept_alignment",
    "context_window",
    "contexts_at",
    "decoder_redundancy",
    "decoder_similarity",
    "feature_stats",
    "frequent_tokens",
    "highest_share_latent",
    "histogram_of",
    "informative_latent",
    "is_medical_piece",
    "latent_codes",
    "latent_histogram",
    "latents_on_text",
    "logit_effects",
    "logit_histogram",
    "logit_vector",
    "matching_pieces",
    "nearest_features",
    "prompt_codes",
    "quantile_samples",
    "rank_latents",
    "row_lookup",
    "search_top_tokens",
    "sparse_codes",
    "special_ids",
    "stats_from_codes",
    "top_contexts",
    "top_token_ids",
    "vocabulary_shares",
    "word_at",
]
