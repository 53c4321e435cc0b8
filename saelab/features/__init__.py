"""Per-latent views of a trained SAE: statistics, top contexts, logit effects, concepts,
decoder geometry, and finding a latent by its top tokens (one module each).

Everything streams over an `ActivationStore` batch by batch, so no dense `[N, F]` code
matrix is ever held. A latent fires on a token when its code is non-zero
(`saelab.sae.fires`). Token strings use the tokenizer's pieces with the word-start marker
shown as a space (`saelab.data.token_str`); vocabularies come from the dataset cards
(`saelab.data.vocabulary`).
"""

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
    TokenLatents,
    latents_on_text,
    top_contexts,
    top_token_ids,
)
from saelab.features.geometry import (
    DecoderSimilarity,
    Redundancy,
    decoder_redundancy,
    decoder_similarity,
)
from saelab.features.logits import LogitEffects, logit_effects
from saelab.features.search import (
    alive_latents,
    highest_share_latent,
    matching_pieces,
    search_top_tokens,
)
from saelab.features.stats import FeatureStats, Histogram, feature_stats, latent_histogram

__all__ = [
    "Context",
    "DecoderSimilarity",
    "FeatureStats",
    "FrequentTokens",
    "Histogram",
    "LogitEffects",
    "Redundancy",
    "TokenLatents",
    "alive_latents",
    "concept_alignment",
    "decoder_redundancy",
    "decoder_similarity",
    "feature_stats",
    "frequent_tokens",
    "highest_share_latent",
    "is_medical_piece",
    "latent_histogram",
    "latents_on_text",
    "logit_effects",
    "matching_pieces",
    "search_top_tokens",
    "top_contexts",
    "top_token_ids",
    "vocabulary_shares",
    "word_at",
]
