"""`evaluate`: every metric of docs/methods.md, "Metrics", for one or more SAEs at a hookpoint.

All reconstruction and linear metrics are on the *kept* tokens: BOS and attention sinks
(`activations.keep_mask`) are dropped, and those positions pass through unchanged when
splicing for CE. `evaluate(...)` returns a pandas DataFrame, one row per SAE;
`metrics_dict(...)` turns it (or one row) into plain Python dicts, e.g. for JSON.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import torch
from tqdm.auto import tqdm

from saelab import interventions
from saelab.activations import SINK_FACTOR, ActivationStore, harvest
from saelab.data import pack
from saelab.metrics.ce import ce_metrics
from saelab.metrics.linear_error import LinearErrorAccumulator
from saelab.metrics.reconstruction import Moments, ReconstructionAccumulator
from saelab.models import Hookpoint, d_model, model_device, parse_hookpoint
from saelab.sae import check_fits


def name_saes(saes) -> dict:
    """name → SAE from one SAE, a list or a dict; default names `{kind}-{width}`, made unique."""
    if isinstance(saes, Mapping):
        named = {str(k): v for k, v in saes.items()}
    else:
        named, counts = {}, {}
        for sae in [saes] if isinstance(saes, torch.nn.Module) else list(saes):
            base = f"{sae.cfg.kind or type(sae).__name__}-{sae.cfg.width}"
            counts[base] = counts.get(base, 0) + 1
            name = base if counts[base] == 1 else f"{base}-{counts[base]}"
            while name in named:
                counts[base] += 1
                name = f"{base}-{counts[base]}"
            named[name] = sae
    if not named:
        raise ValueError("evaluate needs at least one SAE")
    return named


def _check(named: dict, model, hp: Hookpoint) -> None:
    """Each SAE must take the model's hidden size; another hookpoint only warns (a transfer)."""
    for name, sae in named.items():
        if any(p.device.type == "meta" for p in sae.parameters()):
            raise ValueError(
                f"SAE {name!r} is on the meta device (shapes only, no weights): load it, or "
                "sae.to_empty(device=...) and load its weights, before evaluating"
            )
        check_fits(sae.cfg, f"SAE {name!r}", d_in=d_model(model), d_in_of="the model's hidden size")
        if sae.cfg.hookpoint and sae.cfg.hookpoint != str(hp):
            # stacklevel 4: this helper, evaluate, torch.no_grad's wrapper, the caller
            warnings.warn(
                f"SAE {name!r} was trained on {sae.cfg.hookpoint}, evaluated on {hp}", stacklevel=4
            )


def _prepare(sae: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The SAE on `device` in `dtype`: itself when it already is, else a copy (the caller's
    SAE is never moved or cast)."""
    if any(p.device != device or p.dtype != dtype for p in sae.parameters()):
        sae = copy.deepcopy(sae).to(device=device, dtype=dtype)
    return sae


def _reconstruct(
    saes: dict,
    store: ActivationStore,
    fit_N: torch.Tensor,
    linear: bool,
    device: torch.device,
    dtype: torch.dtype,
    chunk: int,
    progress: bool,
):
    """Every SAE over the kept activations, `chunk` tokens at a time: the reconstruction and
    linear-error accumulators by name, and the moments of x (for the mean ablation)."""
    rec = {n: ReconstructionAccumulator() for n in saes}
    lin = {n: LinearErrorAccumulator() for n in saes} if linear else {}
    x_moments = Moments()
    out_dtype = torch.promote_types(dtype, torch.float32)  # bf16 SAEs are scored in float32
    n_tokens = len(store)
    bar = tqdm(
        total=n_tokens,
        unit="tok",
        disable=not progress,
        desc=f"reconstruct {store.info.hookpoint}: {len(saes)} SAE(s)",
    )
    for start in range(0, n_tokens, chunk):
        idx = torch.arange(start, min(start + chunk, n_tokens))
        x_ND = store.get(idx).float()
        x_moments.update(x_ND)
        x_dev_ND = x_ND.to(device)
        x_in_ND = x_dev_ND.to(dtype)
        fit_sel = fit_N[idx]
        for name, sae in saes.items():
            out = sae(x_in_ND)
            x_hat_ND, f_NF = out.x_hat.to(out_dtype), out.f
            if not torch.isfinite(x_hat_ND).all():
                bad = int((~torch.isfinite(x_hat_ND)).any(-1).sum())
                raise FloatingPointError(
                    f"SAE {name!r} gave non-finite reconstructions for {bad} "
                    f"of {len(x_ND)} tokens (kept tokens {start}.."
                    f"{start + len(x_ND) - 1})"
                )
            rec[name].update(x_dev_ND, x_hat_ND, f_NF)
            if linear:
                e_ND = (x_dev_ND - x_hat_ND).cpu()
                if fit_sel.any():
                    lin[name].update_fit(x_ND[fit_sel], e_ND[fit_sel])
                if (~fit_sel).any():
                    lin[name].update_eval(x_ND[~fit_sel], e_ND[~fit_sel])
        bar.update(len(idx))
    bar.close()
    return rec, lin, x_moments


@torch.no_grad()
def evaluate(
    saes,
    model,
    hookpoint: str | Hookpoint,
    texts,
    max_tokens: int = 16_384,
    ctx_len: int = 128,
    batch_size: int = 8,
    ce: bool = True,
    linear: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    linear_fit_fraction: float = 0.5,
    sink_factor: float = SINK_FACTOR,
    chunk: int = 4096,
    ks=None,
    autocast: bool | None = None,
):
    """Evaluate one SAE, a list, or a dict name → SAE at `hookpoint`; one DataFrame row each.

    `texts`: strings (packed with `saelab.pack(model.tokenizer, texts, ctx_len, max_tokens)`)
    or token ids `[N, T]` (the first ⌈max_tokens/T⌉ contexts are used). Every SAE sees the
    same tokens. Phase 1 harvests the hookpoint (the trace stops there), drops BOS and
    sinks, and runs each SAE over the kept activations for the reconstruction metrics and
    the linear error (fit on the first `linear_fit_fraction` of the contexts, held out on
    the rest). Phase 2 (`ce=True`) runs per batch one clean, one zero-ablated and one
    mean-ablated forward (shared) and one spliced forward per SAE. The SAEs run on
    `device` (default: the model's) in `dtype`, as copies when they are elsewhere.

    `autocast` (default: on when the model is on CUDA): the model's forwards (harvest and
    CE) run under bf16 autocast; the SAEs still run with autocast off on float32 inputs
    (or `dtype`) and every metric sum is float32 or float64 (tolerances: tests/test_devices.py).

    Columns: sae, model, hookpoint, n_tokens (kept), n_dropped (= n_dropped_bos +
    n_dropped_sinks), n_contexts, ctx_len, RECONSTRUCTION_COLUMNS, LINEAR_COLUMNS (+ the
    fit / held-out token counts) when `linear`, CE_COLUMNS (+ ce_predicted_tokens) when
    `ce`. Plain dicts: `metrics_dict(table)` or `table.to_dict("records")`.

    `ks` (a list of ints): serve every SAE at each k (`sae.at_k`, TopK family, e.g. one
    HierarchicalTopK SAE at k = 8, 16, 32, 64): one row per (SAE, k), named
    `{name}@k{k}`, with a `k` column.
    """
    import pandas as pd

    named = name_saes(saes)
    if ks is not None:
        named = {f"{name}@k{k}": sae.at_k(k) for name, sae in named.items() for k in ks}
    hp = parse_hookpoint(model, hookpoint)
    _check(named, model, hp)
    device = torch.device(device) if device is not None else model_device(model)
    if isinstance(texts, torch.Tensor):
        tokens_CT = texts.long()
        if tokens_CT.ndim != 2:
            raise ValueError(f"token ids must be [N, T], got shape {tuple(tokens_CT.shape)}")
    else:
        tokens_CT = pack(model.tokenizer, texts, ctx_len, max_tokens)
    if max_tokens:
        tokens_CT = tokens_CT[: -(-max_tokens // tokens_CT.shape[1])]
    n_ctx, T = tokens_CT.shape

    # Phase 1: the kept activations, then every SAE over them.
    with interventions.autocast_forwards(autocast):
        store = harvest(
            model,
            hp,
            tokens_CT,
            max_tokens=tokens_CT.numel(),
            batch_size=batch_size,
            sink_factor=sink_factor,
            device=model_device(model),
            progress=progress,
        )
    n_tokens = len(store)
    ctx_N = store.context_N.long()
    if n_ctx > 1:
        n_fit_ctx = min(max(round(linear_fit_fraction * n_ctx), 1), n_ctx - 1)
        fit_N = ctx_N < n_fit_ctx
    else:
        fit_N = torch.arange(n_tokens) < int(linear_fit_fraction * n_tokens)
    prepared = {name: _prepare(sae, device, dtype) for name, sae in named.items()}
    # Every submodule's own mode, restored as it was (an `at_k` wrapper is new, its SAE not).
    modes = {m: m.training for sae in prepared.values() for m in sae.modules()}
    try:
        for sae in prepared.values():
            sae.eval()
        with interventions.autocast_off(device):  # the SAEs in their own dtype, even in a
            rec, lin, x_moments = _reconstruct(  # caller's torch.autocast block
                prepared, store, fit_N, linear, device, dtype, chunk, progress
            )
        # Phase 2: CE with the same tokens for every variant.
        ce_rows = {}
        if ce:
            keep_CT = torch.zeros(n_ctx, T, dtype=torch.bool)
            keep_CT[ctx_N, store.position_N.long()] = True
            ce_rows = ce_metrics(
                model,
                prepared,
                hp,
                tokens_CT,
                keep_CT,
                x_moments.mean(),
                batch_size=batch_size,
                device=device,
                progress=progress,
                dtype=dtype,
                autocast=autocast,
            )
    finally:
        for module, training in modes.items():
            module.training = training

    info = store.info
    rows = []
    for name in named:
        row = {
            "sae": name,
            "model": info.model,
            "hookpoint": str(hp),
            "n_tokens": n_tokens,
            "n_dropped": info.dropped_bos + info.dropped_sinks,
            "n_dropped_bos": info.dropped_bos,
            "n_dropped_sinks": info.dropped_sinks,
            "n_contexts": n_ctx,
            "ctx_len": T,
        }
        metrics = rec[name].result()
        metrics.pop("n_tokens")
        row.update(metrics)
        if linear:
            row.update(lin[name].result())
        row.update(ce_rows.get(name, {}))
        if ks is not None:
            row["k"] = named[name].k
        rows.append(row)
    return pd.DataFrame(rows)


def metrics_dict(table) -> dict:
    """Plain-Python dict(s) from `evaluate`'s output, for JSON.

    A row (Series) → {column: value}; a DataFrame → {sae name: {column: value}}.
    numpy scalars become int / float / str.
    """
    import pandas as pd

    def plain(value):
        return value.item() if hasattr(value, "item") else value

    if isinstance(table, pd.Series):
        return {k: plain(v) for k, v in table.items()}
    return {str(row["sae"]): metrics_dict(row) for _, row in table.iterrows()}
