"""Topics for steering: the project's topic lexicons (`data/topics/`), the offline scores of
one generated text (lexicon share; distinct-2 and compression ratio, which catch the loops
strong steering falls into), and the data-free choice of a seed feature whose decoder
direction promotes a topic's words (its direct logit effect, as `features.logit_effects`
reads one feature), so a steering experiment does not pick its features by looking at the
generations it then scores. docs/methods.md, "Cross-layer feature flow", steps 6 and 7.

Words are the maximal runs of letters a-z of the lower-cased text ("Doctor's" -> "doctor",
"s"), the same split for every score; a text with no words (fewer than two for distinct-2)
scores NaN, which means skip.
"""

from __future__ import annotations

import re
import zlib

import torch

from saelab.data import token_str
from saelab.models import final_norm_weight, hf_module
from saelab.paths import data_dir

_WORD = re.compile(r"[a-z]+")


def topics_dir():
    """`data/topics/`: the project's topic lexicons (see its README)."""
    return data_dir() / "topics"


def load_lexicon(name: str) -> set[str]:
    """The topic lexicon `data/topics/{name}.txt`: one lower-case word a line; blank lines
    and lines starting with `#` are skipped."""
    path = topics_dir() / f"{name}.txt"
    if not path.exists():
        known = sorted(p.stem for p in topics_dir().glob("*.txt"))
        raise FileNotFoundError(f"no topic lexicon {name!r}; known: {known}")
    lines = (line.strip().lower() for line in path.read_text().splitlines())
    return {line for line in lines if line and not line.startswith("#")}


def words(text: str) -> list[str]:
    """The words of `text`: runs of letters a-z after lower-casing."""
    return _WORD.findall(text.lower())


def topic_score(text: str, lexicon: set[str]) -> float:
    """Share of the text's words that are in `lexicon` (NaN without words)."""
    ws = words(text)
    return sum(w in lexicon for w in ws) / len(ws) if ws else float("nan")


def distinct_2(text: str) -> float:
    """Distinct word bigrams over all word bigrams (1 = no bigram repeats; NaN under 2 words).
    Low values catch the loops strong steering falls into."""
    ws = words(text)
    pairs = list(zip(ws, ws[1:], strict=False))
    return len(set(pairs)) / len(pairs) if pairs else float("nan")


def compression_ratio(text: str) -> float:
    """UTF-8 length over zlib (level 9) length: ~1 or below for short varied text, large for
    repetitive text (NaN for the empty text)."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw, 9)) if raw else float("nan")


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
