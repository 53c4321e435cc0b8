"""Which features to steer for a topic: the data-free choice of a seed feature whose decoder
direction promotes a topic's words (its direct logit effect, as `features.logit_effects`
reads one feature), so a steering experiment does not pick its features by looking at the
generations it then scores."""

from __future__ import annotations

import torch

from saelab.data import token_str
from saelab.models import final_norm_weight, hf_module
from saelab.steer.sweep import words


@torch.no_grad()
def promoted_token_ids(sae, model, top_k: int = 20, chunk: int = 4096) -> torch.Tensor:
    """`[F, top_k]` ids of the tokens each feature's decoder row promotes most:
    `W_U (g * d_f)` with `g` the final norm's gain (the per-token RMS does not change the order)."""
    W_U_VD = hf_module(model).get_output_embeddings().weight.detach().float().cpu()
    W_FD = sae.W_dec_FD.detach().float().cpu()
    gain = final_norm_weight(model)
    if gain is not None:
        W_FD = W_FD * gain.detach().float().cpu()
    return torch.cat([(rows @ W_U_VD.T).topk(top_k, dim=1).indices for rows in W_FD.split(chunk)])


def lexicon_scores(sae, model, lexicon: set[str], top_k: int = 20) -> torch.Tensor:
    """`[F]` share of each feature's `top_k` promoted tokens that are a lexicon word."""
    ids_FK = promoted_token_ids(sae, model, top_k)
    in_lexicon = {}
    for token_id in ids_FK.unique().tolist():
        piece = words(token_str(model.tokenizer, token_id))
        in_lexicon[token_id] = bool(piece) and piece[0] in lexicon
    hits_FK = torch.tensor([[in_lexicon[i] for i in row] for row in ids_FK.tolist()])
    return hits_FK.double().mean(1)


def topic_feature(sae, model, lexicon: set[str], top_k: int = 20) -> tuple[int, float]:
    """(feature, score): the feature whose promoted tokens are most often `lexicon` words
    (ties: the lower id)."""
    scores_F = lexicon_scores(sae, model, lexicon, top_k)
    best = int(scores_F.argmax())
    return best, float(scores_F[best])
