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

Precision: with `autocast` on (by default on CUDA, off elsewhere; `autocast_forwards` sets
the default for a block of code) the model's forward runs under
`torch.autocast(device, dtype=bfloat16)`, while every edit function (an SAE's encode and
decode) runs with autocast off on float32 rows, and the hookpoints and logits come back as
float32. On stories260K with autocast forced on CPU the metrics move by the tolerances in
tests/test_devices.py.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch

from saelab.models import (
    Hookpoint,
    first_tensor,
    hook_module,
    model_device,
    parse_hookpoint,
    replace_first,
)

AUTOCAST_DTYPE = torch.bfloat16
_REDUCED = (torch.float16, torch.bfloat16)  # edit functions see these as float32 rows
# None: autocast on CUDA only; `autocast_forwards` overrides it for a block of code.
_AUTOCAST_DEFAULT: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "saelab_autocast", default=None
)

_RUN_ORDER = {"attn_out": 0, "mlp_out": 1, "resid_post": 2}  # within a block


class Edit(NamedTuple):
    """Rewrite `hookpoint`'s output: `h <- fn(h)` on `positions` (bool `[B, T]`), or on every
    position, generated ones included, when `positions` is None. `fn` maps `[N, D]` rows
    (with `positions`) or the whole `[B, T, D]` output (without) to the same shape."""

    hookpoint: Hookpoint
    fn: Callable[[torch.Tensor], torch.Tensor]
    positions: torch.Tensor | None = None


@contextlib.contextmanager
def autocast_forwards(enabled: bool | None) -> Iterator[None]:
    """Inside the block, traces whose `autocast` is None use `enabled` (None: on for CUDA),
    e.g. so `harvest` called by `evaluate(..., autocast=True)` runs its forwards in bf16."""
    token = _AUTOCAST_DEFAULT.set(enabled)
    try:
        yield
    finally:
        _AUTOCAST_DEFAULT.reset(token)


def autocast_on(device: torch.device, autocast: bool | None = None) -> bool:
    """Whether forwards on `device` run under bf16 autocast: `autocast` when given, else the
    `autocast_forwards` default, else only on CUDA."""
    if autocast is None:
        autocast = _AUTOCAST_DEFAULT.get()
    if autocast is None:
        return device.type == "cuda"
    if autocast and device.type not in ("cuda", "cpu"):
        raise ValueError(f"bf16 autocast runs on cuda or cpu, not on a {device.type} model")
    return bool(autocast)


def _forward_precision(model, autocast: bool | None):
    """The autocast context a model forward runs in (a disabled one when autocast is off)."""
    device = model_device(model)
    if not autocast_on(device, autocast):
        return autocast_off(device), False
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPE), True


def autocast_off(device: torch.device):
    """A block with autocast off (a caller's own `torch.autocast` included); a no-op on
    devices autocast does not know."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def execution_order(hookpoints: Sequence[Hookpoint]) -> list[int]:
    """Indices of `hookpoints` in the order the model computes them (layer, attn < mlp < block)."""
    return sorted(
        range(len(hookpoints)), key=lambda i: (hookpoints[i].layer, _RUN_ORDER[hookpoints[i].kind])
    )


@torch.no_grad()
def read_hookpoints(
    model,
    hookpoints: Sequence[str | Hookpoint],
    ids_BT: torch.Tensor,
    edits: Sequence[Edit] = (),
    autocast: bool | None = None,
) -> list[torch.Tensor]:
    """The outputs `[B, T, D]` of `hookpoints` on `ids_BT`, in the order given; one trace that
    stops after the deepest, so no layer above it (nor the LM head) runs.

    With `edits`, the model runs edited and the reads see the result: an edit at or below a
    read hookpoint changes what is read (at the same hookpoint, the edited output is read).
    Under `autocast` (module docstring) the outputs are float32.
    """
    parsed = [parse_hookpoint(model, h) for h in hookpoints]
    # (hookpoint, is_read, index), edits listed first: the stable sort keeps an edit before a
    # read of the same hookpoint
    steps = [(e.hookpoint, False, i) for i, e in enumerate(edits)]
    steps += [(h, True, i) for i, h in enumerate(parsed)]
    steps = [steps[i] for i in execution_order([hp for hp, _, _ in steps])]
    saved: list = [None] * len(parsed)
    precision, autocast = _forward_precision(model, autocast)
    with precision, model.trace(ids_BT) as tracer:
        for hookpoint, is_read, i in steps:
            if is_read:
                saved[i] = first_tensor(hook_module(model, hookpoint).output).save()
            else:
                _apply(model, edits[i])
        tracer.stop()
    saved = [s.float() if autocast else s for s in saved]
    return [s if s.dim() == 3 else s.unsqueeze(0) for s in saved]


def _edited(fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """`fn(h)` in `h`'s dtype, computed with autocast off on float32 rows when `h` is bf16 or
    float16 (an SAE inside `fn` then encodes and decodes in float32)."""
    with autocast_off(h.device):
        return fn(h.float() if h.dtype in _REDUCED else h).to(h.dtype)


def _apply(model, edit: Edit) -> None:
    """Inside a trace: replace the hookpoint's output by the edited one."""
    module = hook_module(model, edit.hookpoint)
    out = module.output
    h_BTD = first_tensor(out)
    if edit.positions is None:
        new_BTD = _edited(edit.fn, h_BTD)
    else:
        at_BT = edit.positions.to(h_BTD.device)  # a CPU mask indexes a CUDA output
        new_BTD = h_BTD.clone()
        new_BTD[at_BT] = _edited(edit.fn, h_BTD[at_BT])
    module.output = replace_first(out, new_BTD)


@torch.no_grad()
def logits(
    model, ids_BT: torch.Tensor, edits: Sequence[Edit] = (), autocast: bool | None = None
) -> torch.Tensor:
    """Next-token logits `[B, T, V]` of `ids_BT`, with `edits` applied (none: the clean forward);
    float32 under `autocast`."""
    precision, autocast = _forward_precision(model, autocast)
    with precision, model.trace(ids_BT):
        for i in execution_order([e.hookpoint for e in edits]):
            _apply(model, edits[i])
        out = model.output.logits.save()
    return out.float() if autocast else out


@torch.no_grad()
def generate(
    model,
    ids_1T: torch.Tensor,
    edits: Sequence[Edit] = (),
    max_new_tokens: int = 32,
    autocast: bool | None = None,
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
    precision, _ = _forward_precision(model, autocast)
    with (
        precision,
        model.generate(ids_1T, max_new_tokens=max_new_tokens, **generate_options) as tracer,
    ):
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


@functools.cache
def language_model_class():
    """nnsight's `LanguageModel` with a model-wide default for `remote=`: every trace and
    generate saelab opens (saelab/interventions.py) goes through `trace`, so setting
    `saelab_remote` once routes them all to NDIF (True, or a host URL) or through nnsight's
    in-process serialise/deserialise dry run ("local")."""
    from nnsight import LanguageModel

    class SaelabLanguageModel(LanguageModel):
        saelab_remote: bool | str = False

        def trace(self, *inputs, remote=None, **kwargs):
            remote = self.saelab_remote if remote is None else remote
            return super().trace(*inputs, remote=remote, **kwargs)

    return SaelabLanguageModel
