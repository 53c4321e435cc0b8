"""Every nnsight trace saelab opens: read hookpoints, run with edits, generate with edits.

The model stays the user's nnsight model; an intervention is written like the forward
pass it changes. An `Edit` rewrites one hookpoint's output, `h_BTD -> fn(h_BTD)`, on the
positions it names (bool `[B, T]`) or on every position, generated ones included. The
constructors below make the edits saelab needs: `splice` (a reconstruction in place of
the activations, for CE loss recovered), `add_direction` (steering) and
`scale_direction` (ablation and suppression).

nnsight 0.8 runs the intervention code beside the real forward, so modules must be
touched in the order they execute (`execution_order`), and a trace that only reads
stops after the deepest hookpoint (`tracer.stop()`: SmolLM2 layer 15 harvests at
~1,150 tokens/s with the stop, ~480 without, on 2 cores). nnsight re-reads this file's
source lazily: do not edit it while a long run is in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from saelab.models import Hookpoint, first_tensor, hook_module, parse_hookpoint, replace_first

_RUN_ORDER = {"attn_out": 0, "mlp_out": 1, "resid_post": 2}  # within a block


class Edit(NamedTuple):
    """Rewrite `hookpoint`'s output: `h <- fn(h)` on `positions` (bool `[B, T]`), or on every
    position, generated ones included, when `positions` is None. `fn` maps `[N, D]` rows
    (with `positions`) or the whole `[B, T, D]` output (without) to the same shape."""

    hookpoint: Hookpoint
    fn: Callable[[torch.Tensor], torch.Tensor]
    positions: torch.Tensor | None = None


def execution_order(hookpoints: Sequence[Hookpoint]) -> list[int]:
    """Indices of `hookpoints` in the order the model computes them (layer, attn < mlp < block)."""
    return sorted(
        range(len(hookpoints)), key=lambda i: (hookpoints[i].layer, _RUN_ORDER[hookpoints[i].kind])
    )


@torch.no_grad()
def read_hookpoints(
    model, hookpoints: Sequence[str | Hookpoint], ids_BT: torch.Tensor, edits: Sequence[Edit] = ()
) -> list[torch.Tensor]:
    """The outputs `[B, T, D]` of `hookpoints` on `ids_BT`, in the order given; one trace that
    stops after the deepest, so no layer above it (nor the LM head) runs.

    With `edits`, the model runs edited and the reads see the result: an edit at or below a
    read hookpoint changes what is read (at the same hookpoint, the edited output is read).
    """
    parsed = [parse_hookpoint(model, h) for h in hookpoints]
    # (hookpoint, is_read, index), edits listed first: the stable sort keeps an edit before a
    # read of the same hookpoint
    steps = [(e.hookpoint, False, i) for i, e in enumerate(edits)]
    steps += [(h, True, i) for i, h in enumerate(parsed)]
    steps = [steps[i] for i in execution_order([hp for hp, _, _ in steps])]
    saved: list = [None] * len(parsed)
    with model.trace(ids_BT) as tracer:
        for hookpoint, is_read, i in steps:
            if is_read:
                saved[i] = first_tensor(hook_module(model, hookpoint).output).save()
            else:
                _apply(model, edits[i])
        tracer.stop()
    return [s if s.dim() == 3 else s.unsqueeze(0) for s in saved]


def _apply(model, edit: Edit) -> None:
    """Inside a trace: replace the hookpoint's output by the edited one."""
    module = hook_module(model, edit.hookpoint)
    out = module.output
    h_BTD = first_tensor(out)
    if edit.positions is None:
        new_BTD = edit.fn(h_BTD).to(h_BTD.dtype)
    else:
        new_BTD = h_BTD.clone()
        new_BTD[edit.positions] = edit.fn(h_BTD[edit.positions]).to(h_BTD.dtype)
    module.output = replace_first(out, new_BTD)


@torch.no_grad()
def logits(model, ids_BT: torch.Tensor, edits: Sequence[Edit] = ()) -> torch.Tensor:
    """Next-token logits `[B, T, V]` of `ids_BT`, with `edits` applied (none: the clean forward)."""
    with model.trace(ids_BT):
        for i in execution_order([e.hookpoint for e in edits]):
            _apply(model, edits[i])
        out = model.output.logits.save()
    return out


@torch.no_grad()
def generate(
    model,
    ids_1T: torch.Tensor,
    edits: Sequence[Edit] = (),
    max_new_tokens: int = 32,
    **generate_options,
) -> torch.Tensor:
    """Prompt plus `max_new_tokens` generated ids `[B, T + max_new_tokens]`, with `edits`
    applied on every forward of the decode loop.

    With the KV cache each new token's forward has sequence length 1; an edit with
    `positions=None` rewrites those positions too (a hook that skips length-1 inputs, as
    some tutorials write, steers nothing after the prompt). `generate_options` go to the
    model's `generate` (`do_sample`, `temperature`, `top_p`, ...). Position masks only fit
    the prompt's forward, so edits during generation must have `positions=None`.

    Exactly `max_new_tokens` are generated (`min_new_tokens` holds end-of-text off): the edit
    loop is bounded by that count, and in nnsight 0.8 a run that stops early leaves the loop
    waiting for steps that never come, so nothing after it (the result) would run.
    """
    if any(e.positions is not None for e in edits):
        raise ValueError("edits during generation apply to every position: pass positions=None")
    order = execution_order([e.hookpoint for e in edits])
    generate_options = {"min_new_tokens": max_new_tokens, **generate_options}
    with model.generate(ids_1T, max_new_tokens=max_new_tokens, **generate_options) as tracer:
        # A bounded loop: code after an unbounded `tracer.all()` never runs in nnsight 0.8.
        for _step in tracer.iter[:max_new_tokens]:
            for i in order:
                _apply(model, edits[i])
        out = tracer.result.save()
    return out


# --- edits --------------------------------------------------------------------------------------
def splice(
    model,
    hookpoint: str | Hookpoint,
    replace: Callable[[torch.Tensor], torch.Tensor],
    positions: torch.Tensor,
) -> Edit:
    """Rows at `positions` (bool `[B, T]`) replaced by `replace(rows_ND)`, e.g. an SAE's
    reconstruction; the other positions (BOS, sinks) pass through unchanged."""
    return Edit(parse_hookpoint(model, hookpoint), replace, positions)


def add_direction(
    model,
    hookpoint: str | Hookpoint,
    direction_D: torch.Tensor,
    coefficient: float,
    positions: torch.Tensor | None = None,
) -> Edit:
    """`h <- h + coefficient · direction` (steering by promotion)."""
    direction_D = direction_D.detach()
    return Edit(
        parse_hookpoint(model, hookpoint), lambda h: h + coefficient * direction_D.to(h), positions
    )


def scale_direction(
    model,
    hookpoint: str | Hookpoint,
    direction_D: torch.Tensor,
    r: float,
    positions: torch.Tensor | None = None,
) -> Edit:
    """`h <- h + (r − 1)·<h, d̂>·d̂`: the component along `direction` scaled by `r` (0 removes
    it, −1 flips it). For an SAE feature, the component is its projection, not its code."""
    unit_D = (direction_D / direction_D.norm()).detach()

    def fn(h: torch.Tensor) -> torch.Tensor:
        d = unit_D.to(h)
        return h + (r - 1) * (h @ d).unsqueeze(-1) * d

    return Edit(parse_hookpoint(model, hookpoint), fn, positions)
