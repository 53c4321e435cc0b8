"""Steered generation: a plan's edits on every forward of the decode loop, KV cache on.

docs/methods.md, "Cross-layer feature flow", step 6: every generated token is steered. With
the KV cache each new token's forward has sequence length 1; `interventions.generate` edits
those positions too (tested in tests/test_interventions.py). Sampling is seeded per sample
(`torch.manual_seed(seed + i)` inside a forked RNG, so the caller's RNG is left alone): a
call is reproducible, and two plans given the same seed draw the same random numbers, which
makes a zero-strength plan reproduce the unsteered text exactly, greedy or sampled.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from saelab.interventions import generate as generate_with_edits  # the one traced decode loop
from saelab.models import model_device
from saelab.steer.plan import SteeringTerm, plan_edits


def prompt_ids(model, prompt: str) -> torch.Tensor:
    """`[1, T]` ids of `prompt` starting with BOS (as `saelab.pack` starts every context, so
    steered text is read the way the SAEs' training contexts were)."""
    tok = model.tokenizer
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    return torch.tensor([[bos, *ids]], dtype=torch.long, device=model_device(model))


def generate_ids(
    model,
    prompt: str,
    plan: Sequence[SteeringTerm] = (),
    max_new_tokens: int = 36,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    n_samples: int = 1,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(prompt ids `[1, T]`, one `[T + max_new_tokens]` id tensor per sample, prompt included,
    on CPU). Exactly `max_new_tokens` are generated (`interventions.generate` holds
    end-of-text off), so samples compare at equal length."""
    ids_1T = prompt_ids(model, prompt)
    edits = plan_edits(model, plan)
    options = {"do_sample": do_sample}
    if do_sample:
        options.update(temperature=temperature, top_p=top_p)
    pad = model.tokenizer.pad_token_id
    options["pad_token_id"] = model.tokenizer.eos_token_id if pad is None else pad
    device = model_device(model)
    cuda = [device] if device.type == "cuda" else []
    samples = []
    for i in range(n_samples):
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed + i)
            out = generate_with_edits(model, ids_1T, edits, max_new_tokens, **options)
        samples.append(out[0].cpu())
    return ids_1T.cpu(), samples


def generate(
    model, prompt: str, plan: Sequence[SteeringTerm] = (), max_new_tokens: int = 36, **options
) -> list[str]:
    """The new text of each generation from `prompt` with `plan` applied on every token
    (prompt and generated), decoded without special tokens. `options` are `generate_ids`'s
    (`do_sample=False`, `temperature`, `top_p`, `seed`, `n_samples`):
    greedy by default; with `do_sample` sample `i` is drawn after `torch.manual_seed(seed + i)`.
    The paper's setting: prompt "I think ", 36 new tokens, `top_p=0.7`, `temperature=1.27`."""
    ids_1T, samples = generate_ids(model, prompt, plan, max_new_tokens, **options)
    start = ids_1T.shape[1]
    return [model.tokenizer.decode(s[start:], skip_special_tokens=True) for s in samples]
