"""Evaluate SAEs: reconstruction, linear residual error ("dark matter"), CE loss recovered.

The maths is METHODS.md's "Metrics" section. All reconstruction and linear metrics are
on the *kept* tokens: BOS and attention sinks (`activations.keep_mask`) are dropped, and
those positions pass through unchanged when splicing for CE. Sums are accumulated in
float64 and every metric streams over batches, so an evaluation set of 100k tokens x 576
dims never needs a dense `[N, F]` code matrix (latent firing is tracked as counts).

`evaluate(...)` runs the whole pipeline and returns a pandas DataFrame, one row per SAE;
`metrics_dict(...)` turns it (or one row) into plain Python dicts, e.g. for JSON.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Callable, Mapping

import torch
from tqdm.auto import tqdm

from saelab.activations import SINK_FACTOR, harvest
from saelab.data import pack
from saelab.models import d_model, first_tensor, hook_module, parse_hookpoint, replace_first

DENSE_THRESHOLD = 0.1  # a latent firing on more than this share of tokens counts as dense
RIDGE_START = 1e-12  # first ridge (x mean variance) tried when Cov(x) is singular in the linear fit

RECONSTRUCTION_COLUMNS = ["mse", "fvu", "explained_variance", "l0", "dead_fraction", "dense_fraction"]
LINEAR_COLUMNS = ["linear_error_r2", "linear_error_fvu", "nonlinear_error_fvu"]
CE_COLUMNS = ["ce_clean", "ce_sae", "ce_zero_ablate", "ce_mean_ablate", "ce_loss_recovered",
              "ce_loss_recovered_mean", "delta_ce", "kl"]


def _div(num: float, den: float) -> float:
    """num / den, NaN when the denominator is not positive (e.g. an error that is exactly 0)."""
    return num / den if den > 0 else math.nan


# --- shifted float64 moments -----------------------------------------------------------------
class _Moments:
    """Streaming Σ(x − s) and Σ‖x − s‖² with the shift `s` = the first batch's mean.

    `sq_dev()` = Σ‖x − x̄‖² about the running mean, without the cancellation of
    Σ‖x‖² − N‖x̄‖² when the mean is large (as it is for residual streams).
    """

    def __init__(self):
        self.n = 0
        self.shift_D = None
        self.sum_D = None
        self.sq = 0.0

    def update(self, x_ND: torch.Tensor) -> None:
        x_ND = x_ND.double()
        if self.shift_D is None:
            self.shift_D = x_ND.mean(0)
            self.sum_D = torch.zeros_like(self.shift_D)
        d_ND = x_ND - self.shift_D
        self.n += len(x_ND)
        self.sum_D += d_ND.sum(0)
        self.sq += float(d_ND.pow(2).sum())

    def mean(self) -> torch.Tensor:
        return self.shift_D + self.sum_D / self.n

    def sq_dev(self) -> float:
        """Σ‖x − x̄‖² over everything seen."""
        return self.sq - float(self.sum_D.pow(2).sum()) / self.n


# --- reconstruction --------------------------------------------------------------------------
class ReconstructionAccumulator:
    """Reconstruction metrics over batches of (x, x̂, f); `result()` gives the dict.

    Keeps float64 sums and one int64 fire count per latent, never the codes themselves.
    """

    def __init__(self, width: int | None = None, dense_threshold: float = DENSE_THRESHOLD):
        self.width = width
        self.dense_threshold = dense_threshold
        self.x = _Moments()
        self.sq_err = 0.0
        self.n_active = 0
        self.fires_F = None if width is None else torch.zeros(width, dtype=torch.int64)

    @torch.no_grad()
    def update(self, x_ND: torch.Tensor, x_hat_ND: torch.Tensor, f_NF: torch.Tensor) -> None:
        if x_ND.shape != x_hat_ND.shape or len(f_NF) != len(x_ND):
            raise ValueError(f"shapes do not match: x {tuple(x_ND.shape)}, x_hat {tuple(x_hat_ND.shape)}, "
                             f"f {tuple(f_NF.shape)}")
        if self.fires_F is None:
            self.fires_F = torch.zeros(f_NF.shape[-1], dtype=torch.int64)
        active_NF = f_NF != 0
        self.fires_F += active_NF.sum(0).cpu()
        self.n_active += int(active_NF.sum())
        self.sq_err += float((x_ND.double() - x_hat_ND.double()).pow(2).sum())
        self.x.update(x_ND)

    @property
    def n_tokens(self) -> int:
        return self.x.n

    def mean_D(self) -> torch.Tensor:
        """x̄, the float64 mean activation over the tokens seen."""
        return self.x.mean()

    def result(self) -> dict:
        """mse, fvu (about the mean), explained_variance, l0, dead/dense fraction, n_tokens."""
        n = self.n_tokens
        if n == 0:
            raise ValueError("no tokens were added to the reconstruction metrics")
        fvu = _div(self.sq_err, self.x.sq_dev())
        fire_rate_F = self.fires_F.double() / n
        return {
            "mse": self.sq_err / n,
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "l0": self.n_active / n,
            "dead_fraction": float((self.fires_F == 0).double().mean()),
            "dense_fraction": float((fire_rate_F > self.dense_threshold).double().mean()),
            "n_tokens": n,
        }


def reconstruction_metrics(x_ND: torch.Tensor, x_hat_ND: torch.Tensor, f_NF: torch.Tensor,
                           dense_threshold: float = DENSE_THRESHOLD) -> dict:
    """METHODS.md reconstruction metrics of one in-memory set of tokens.

    mse = mean ‖x − x̂‖²; fvu = Σ‖x − x̂‖² / Σ‖x − x̄‖² with x̄ the mean over these tokens
    (not about zero); explained_variance = 1 − fvu; l0 = mean non-zero latents per token;
    dead_fraction = share of latents never firing here; dense_fraction = share firing on
    more than `dense_threshold` of the tokens. For streams use `ReconstructionAccumulator`.
    """
    acc = ReconstructionAccumulator(f_NF.shape[-1], dense_threshold)
    acc.update(x_ND, x_hat_ND, f_NF)
    return acc.result()


# --- linear residual error ("dark matter", Engels et al. arXiv 2410.14670) -----------------
class LinearErrorAccumulator:
    """Fit e ≈ x A + c on fit tokens, then score it on held-out tokens, in one stream.

    Feed every fit batch with `update_fit`, then every held-out batch with `update_eval`
    (the first `update_eval` solves). The fit is ordinary least squares in float64 on the
    centred covariance: A = Cov(x)⁻¹ Cov(x, e) by Cholesky, c = ē − x̄ A. Only when the
    Cholesky factorisation fails (a singular covariance, e.g. fewer fit tokens than dims)
    is a tiny ridge added to the diagonal, starting at RIDGE_START x mean variance and
    growing 100x per try; `ridge` records what was used (0.0 for plain least squares).
    (Cholesky, not eigh: torch's CPU eigh takes ~10 s at 576 dims, Cholesky ~20 ms.)
    """

    def __init__(self):
        self.n_fit = 0
        self.sx_shift = self.se_shift = None
        self.sx_D = self.se_D = self.sxx_DD = self.sxe_DD = None
        self.A_DD = self.c_D = None
        self.ridge = 0.0
        self.e = _Moments()  # held-out e
        self.x = _Moments()  # held-out x
        self.sq_resid = 0.0  # Σ‖e − ê‖²
        self.e_hat_sum_D = None  # Σ(ê − s_e)
        self.e_hat_sq = 0.0  # Σ‖ê − s_e‖²

    @torch.no_grad()
    def update_fit(self, x_ND: torch.Tensor, e_ND: torch.Tensor) -> None:
        if self.A_DD is not None:
            raise RuntimeError("update_fit after update_eval: the fit is already solved")
        x_ND, e_ND = x_ND.double().cpu(), e_ND.double().cpu()
        if self.sx_shift is None:
            self.sx_shift, self.se_shift = x_ND.mean(0), e_ND.mean(0)
            self.sx_D, self.se_D = torch.zeros_like(self.sx_shift), torch.zeros_like(self.se_shift)
            self.sxx_DD = torch.zeros(x_ND.shape[1], x_ND.shape[1], dtype=torch.float64)
            self.sxe_DD = torch.zeros(x_ND.shape[1], e_ND.shape[1], dtype=torch.float64)
        dx_ND, de_ND = x_ND - self.sx_shift, e_ND - self.se_shift
        self.n_fit += len(x_ND)
        self.sx_D += dx_ND.sum(0)
        self.se_D += de_ND.sum(0)
        self.sxx_DD += dx_ND.T @ dx_ND
        self.sxe_DD += dx_ND.T @ de_ND

    def solve(self) -> None:
        """Least squares from the fit sums (called by the first `update_eval`)."""
        n = self.n_fit
        if n < 2:
            raise ValueError(f"linear error needs at least 2 fit tokens, got {n}")
        if n <= self.sxx_DD.shape[0]:
            warnings.warn(f"linear error: {n} fit tokens for {self.sxx_DD.shape[0]} dims; the fit is "
                          "underdetermined and the held-out R² will be low", stacklevel=4)
        mx_D, me_D = self.sx_D / n, self.se_D / n
        cxx_DD = self.sxx_DD / n - torch.outer(mx_D, mx_D)
        cxe_DD = self.sxe_DD / n - torch.outer(mx_D, me_D)
        scale = float(cxx_DD.diagonal().mean())
        scale = scale if scale > 0 else 1.0
        eye_DD = torch.eye(len(cxx_DD), dtype=torch.float64)
        ridge = 0.0
        for _ in range(12):
            chol_DD, info = torch.linalg.cholesky_ex(cxx_DD + ridge * eye_DD)
            if int(info) == 0:
                break
            ridge = RIDGE_START * scale if ridge == 0 else ridge * 100
        else:
            raise FloatingPointError("linear error: the covariance of x is not positive definite even "
                                     f"with a ridge of {ridge:.3g}; are the activations finite?")
        self.ridge = ridge
        self.A_DD = torch.cholesky_solve(cxe_DD, chol_DD)
        self.c_D = (self.se_shift + me_D) - (self.sx_shift + mx_D) @ self.A_DD

    def predict(self, x_ND: torch.Tensor) -> torch.Tensor:
        """ê = x A + c (float64)."""
        return x_ND.double().cpu() @ self.A_DD + self.c_D

    @torch.no_grad()
    def update_eval(self, x_ND: torch.Tensor, e_ND: torch.Tensor) -> None:
        if self.A_DD is None:
            self.solve()
        x_ND, e_ND = x_ND.double().cpu(), e_ND.double().cpu()
        e_hat_ND = self.predict(x_ND)
        self.x.update(x_ND)
        self.e.update(e_ND)
        self.sq_resid += float((e_ND - e_hat_ND).pow(2).sum())
        d_ND = e_hat_ND - self.e.shift_D
        self.e_hat_sum_D = d_ND.sum(0) if self.e_hat_sum_D is None else self.e_hat_sum_D + d_ND.sum(0)
        self.e_hat_sq += float(d_ND.pow(2).sum())

    def result(self) -> dict:
        """linear_error_r2, linear_error_fvu, nonlinear_error_fvu (held-out), n_fit, n_heldout."""
        n = self.e.n
        if n == 0:
            raise ValueError("linear error: no held-out tokens")
        e_bar_minus_shift_D = self.e.sum_D / n  # ē − s_e
        # Σ‖ê − ē‖² = Σ‖ê − s‖² − 2 (ē − s)·Σ(ê − s) + n‖ē − s‖²
        lin_sq = (self.e_hat_sq - 2 * float(e_bar_minus_shift_D @ self.e_hat_sum_D)
                  + n * float(e_bar_minus_shift_D.pow(2).sum()))
        x_var = self.x.sq_dev()
        return {
            "linear_error_r2": 1.0 - _div(self.sq_resid, self.e.sq_dev()),
            "linear_error_fvu": _div(lin_sq, x_var),
            "nonlinear_error_fvu": _div(self.sq_resid, x_var),
            "linear_fit_tokens": self.n_fit,
            "linear_heldout_tokens": n,
        }


def linear_error(x_ND: torch.Tensor, e_ND: torch.Tensor, fit_fraction: float = 0.5,
                 fit_N: torch.Tensor | None = None, chunk: int = 8192) -> dict:
    """How much of the SAE error e = x − x̂ is a linear function of x (Engels et al.).

    Fits e ≈ x A + c by least squares (float64) on the fit tokens and reports, on the rest:
    linear_error_r2 = 1 − Σ‖e − ê‖²/Σ‖e − ē‖², linear_error_fvu = Σ‖ê − ē‖²/Σ‖x − x̄‖²,
    nonlinear_error_fvu = Σ‖e − ê‖²/Σ‖x − x̄‖² (means over the held-out tokens).
    Split: the first ⌊fit_fraction·N⌋ tokens in the order given fit, the rest are held out
    (deterministic; pass tokens in context order so the halves are mostly whole contexts),
    or `fit_N` (bool `[N]`) chooses the fit tokens. The fit needs many more tokens than dims.
    """
    n = len(x_ND)
    if fit_N is None:
        n_fit = int(fit_fraction * n)
        fit_N = torch.arange(n) < n_fit
    fit_N = fit_N.to(torch.bool).cpu()
    if not 0 < int(fit_N.sum()) < n:
        raise ValueError(f"linear error needs fit and held-out tokens; got {int(fit_N.sum())} of {n} to fit")
    acc = LinearErrorAccumulator()
    fit_idx, eval_idx = fit_N.nonzero().squeeze(1), (~fit_N).nonzero().squeeze(1)
    for idx_fn, update in ((fit_idx, acc.update_fit), (eval_idx, acc.update_eval)):
        for start in range(0, len(idx_fn), chunk):
            sel = idx_fn[start: start + chunk]
            update(x_ND[sel], e_ND[sel])
    return acc.result()


# --- CE loss recovered -----------------------------------------------------------------------
def ce_loss_recovered(ce_clean: float, ce_ablate: float, ce_sae: float) -> float:
    """(CE_ablate − CE_sae) / (CE_ablate − CE_clean): 1 = as good as the model, 0 = as ablation."""
    denom = ce_ablate - ce_clean
    return (ce_ablate - ce_sae) / denom if denom != 0 else math.nan


def _next_token_logprobs(logits_BTV: torch.Tensor) -> torch.Tensor:
    """log-softmax (float32) of the predictions for positions 1..T−1, `[B, T−1, V]`."""
    return torch.log_softmax(logits_BTV[:, :-1].float(), dim=-1)


def _spliced_logits(model, hookpoint, ids_BT: torch.Tensor, keep_BT: torch.Tensor | None,
                    replace: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """Logits `[B, T, V]` with the hookpoint's rows at `keep_BT` set to `replace(rows_ND)`.

    `replace=None` is the clean forward. Positions outside `keep_BT` pass through unchanged.
    """
    if replace is None:
        with model.trace(ids_BT):
            logits = model.output.logits.save()
        return logits
    with model.trace(ids_BT):
        module = hook_module(model, hookpoint)
        out = module.output
        h_BTD = first_tensor(out)
        new_BTD = h_BTD.clone()
        new_BTD[keep_BT] = replace(h_BTD[keep_BT]).to(h_BTD.dtype)
        module.output = replace_first(out, new_BTD)
        logits = model.output.logits.save()
    return logits


@torch.no_grad()
def ce_metrics(model, saes: Mapping[str, torch.nn.Module], hookpoint: str, tokens_CT: torch.Tensor,
               keep_CT: torch.Tensor, mean_D: torch.Tensor, batch_size: int = 8,
               device: str | torch.device | None = None, progress: bool = True) -> dict[str, dict]:
    """CE metrics for each SAE in `saes` (name → SAE) on the packed contexts `tokens_CT`.

    CE = mean next-token cross-entropy over all B·(T−1) predicted positions. Per batch:
    one clean forward, one zero-ablated and one mean-ablated forward (shared by all SAEs),
    and one spliced forward per SAE; each variant changes the hookpoint only at `keep_CT`
    (bool `[C, T]`; BOS and sinks are False and pass through). `mean_D` is the mean
    activation over the kept evaluation tokens. kl = mean over predicted positions of
    KL(clean ‖ spliced). SAEs must already be on the model's device, in float32.
    """
    hp = parse_hookpoint(model, hookpoint)
    device = torch.device(device) if device is not None else next(model._module.parameters()).device
    mean_D = mean_D.to(device=device, dtype=torch.float32)
    names = list(saes)
    sums = {"clean": 0.0, "zero": 0.0, "mean": 0.0, **{f"sae:{n}": 0.0 for n in names}}
    kl_sums = dict.fromkeys(names, 0.0)
    n_pred = 0

    def sae_replace(sae):
        return lambda rows_ND: sae(rows_ND.float()).x_hat

    variants = [("zero", lambda rows_ND: torch.zeros_like(rows_ND)),
                ("mean", lambda rows_ND: mean_D.expand_as(rows_ND)),
                *[(f"sae:{n}", sae_replace(saes[n])) for n in names]]
    bar = tqdm(total=tokens_CT.numel(), unit="tok", disable=not progress,
               desc=f"CE {hookpoint}: clean, 2 ablations, {len(names)} SAE(s)")
    for start in range(0, len(tokens_CT), batch_size):
        ids_BT = tokens_CT[start: start + batch_size].to(device)
        keep_BT = keep_CT[start: start + batch_size].to(device)
        targets_BT1 = ids_BT[:, 1:].unsqueeze(-1)
        lp_clean_BTV = _next_token_logprobs(_spliced_logits(model, hp, ids_BT, None, None))
        sums["clean"] -= float(lp_clean_BTV.gather(-1, targets_BT1).double().sum())
        p_clean_BTV = lp_clean_BTV.exp()
        for key, replace in variants:
            lp_BTV = _next_token_logprobs(_spliced_logits(model, hp, ids_BT, keep_BT, replace))
            sums[key] -= float(lp_BTV.gather(-1, targets_BT1).double().sum())
            if key.startswith("sae:"):
                kl_sums[key[4:]] += float((p_clean_BTV * (lp_clean_BTV - lp_BTV)).sum(-1).double().sum())
            del lp_BTV
        n_pred += targets_BT1.numel()
        bar.update(ids_BT.numel())
    bar.close()
    ce = {k: v / n_pred for k, v in sums.items()}
    results = {}
    for n in names:
        ce_sae = ce[f"sae:{n}"]
        results[n] = {
            "ce_clean": ce["clean"],
            "ce_sae": ce_sae,
            "ce_zero_ablate": ce["zero"],
            "ce_mean_ablate": ce["mean"],
            "ce_loss_recovered": ce_loss_recovered(ce["clean"], ce["zero"], ce_sae),
            "ce_loss_recovered_mean": ce_loss_recovered(ce["clean"], ce["mean"], ce_sae),
            "delta_ce": ce_sae - ce["clean"],
            "kl": kl_sums[n] / n_pred,
            "ce_predicted_tokens": n_pred,
        }
    return results


# --- the whole pipeline -----------------------------------------------------------------------
def _name_saes(saes) -> dict:
    """name → SAE from one SAE, a list or a dict; default names `{kind}-{width}`, made unique."""
    if isinstance(saes, Mapping):
        named = {str(k): v for k, v in saes.items()}
    else:
        items = [saes] if isinstance(saes, torch.nn.Module) or hasattr(saes, "cfg") else list(saes)
        named, counts = {}, {}
        for sae in items:
            cfg = getattr(sae, "cfg", None)
            base = f"{getattr(cfg, 'kind', '') or type(sae).__name__}-{getattr(cfg, 'width', '?')}"
            counts[base] = counts.get(base, 0) + 1
            name = base if counts[base] == 1 else f"{base}-{counts[base]}"
            while name in named:
                counts[base] += 1
                name = f"{base}-{counts[base]}"
            named[name] = sae
    if not named:
        raise ValueError("evaluate needs at least one SAE")
    return named


class AtK(torch.nn.Module):
    """An SAE served at sparsity `k`: `forward(x)` is `sae(x, k=k)` (TopK family)."""

    def __init__(self, sae, k: int):
        super().__init__()
        self.sae, self.k, self.cfg = sae, int(k), sae.cfg

    def forward(self, x_ND: torch.Tensor):
        return self.sae(x_ND, k=self.k)


def _at_ks(named: dict, ks) -> dict:
    """Each SAE once per k in `ks`, named `{name}@k{k}`; only kinds whose forward takes k."""
    out = {}
    for name, sae in named.items():
        if "k" not in inspect.signature(sae.forward).parameters:
            raise ValueError(f"SAE {name!r} ({getattr(sae.cfg, 'kind', '?')}) has a fixed sparsity; "
                             "ks= needs a TopK-family SAE (topk, hierarchical_topk, kron)")
        for k in ks:
            sae.check_k(k)
            out[f"{name}@k{k}"] = AtK(sae, k)
    return out


def _prepare(sae, device: torch.device):
    """The SAE on `device` in float32 and eval mode: itself when it already is, else a copy."""
    params = list(sae.parameters()) if isinstance(sae, torch.nn.Module) else []
    if any(p.device != device or p.dtype != torch.float32 for p in params):
        sae = copy.deepcopy(sae).to(device=device, dtype=torch.float32)
    return sae


def _check_width(name: str, sae, width: int, hookpoint: str) -> None:
    cfg = getattr(sae, "cfg", None)
    d_in = getattr(cfg, "d_in", None)
    if d_in is None:
        raise ValueError(f"SAE {name!r} has no cfg.d_in; saelab SAEs carry a config")
    if d_in != width:
        raise ValueError(f"SAE {name!r} takes d_in={d_in} activations but the model's hidden size "
                         f"is {width}")
    trained_on = getattr(cfg, "hookpoint", "")
    if trained_on and trained_on != hookpoint:
        warnings.warn(f"SAE {name!r} was trained on {trained_on}, evaluated on {hookpoint}", stacklevel=3)


@torch.no_grad()
def evaluate(saes, model, hookpoint: str, texts, max_tokens: int = 16_384, ctx_len: int = 128,
             batch_size: int = 8, ce: bool = True, linear: bool = True,
             device: str | torch.device | None = None, progress: bool = True,
             linear_fit_fraction: float = 0.5, sink_factor: float = SINK_FACTOR, chunk: int = 4096,
             ks=None):
    """Evaluate one SAE, a list, or a dict name → SAE at `hookpoint`; one DataFrame row each.

    `texts`: strings (packed with `saelab.pack(model.tokenizer, texts, ctx_len, max_tokens)`)
    or token ids `[N, T]` (the first ⌈max_tokens/T⌉ contexts are used). Every SAE sees the
    same tokens. Phase 1 harvests the hookpoint (the trace stops there), drops BOS and
    sinks, and runs each SAE over the kept activations for the reconstruction metrics and
    the linear error (fit on the first `linear_fit_fraction` of the contexts, held out on
    the rest). Phase 2 (`ce=True`) runs per batch one clean, one zero-ablated and one
    mean-ablated forward (shared) and one spliced forward per SAE.

    Columns: sae, model, hookpoint, n_tokens (kept), n_dropped (= n_dropped_bos +
    n_dropped_sinks), n_contexts, ctx_len, RECONSTRUCTION_COLUMNS, LINEAR_COLUMNS (+ the
    fit / held-out token counts) when `linear`, CE_COLUMNS (+ ce_predicted_tokens) when
    `ce`. Plain dicts: `metrics_dict(table)` or `table.to_dict("records")`.

    `ks` (a list of ints): serve every SAE at each k (TopK family, e.g. one
    HierarchicalTopK SAE at k = 8, 16, 32, 64): one row per (SAE, k), named
    `{name}@k{k}`, with a `k` column.
    """
    import pandas as pd

    named = _name_saes(saes)
    if ks is not None:
        named = _at_ks(named, ks)
    hp = parse_hookpoint(model, hookpoint)
    width = d_model(model._module)
    for name, sae in named.items():
        _check_width(name, sae, width, str(hp))
    device = torch.device(device) if device is not None else next(model._module.parameters()).device
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
    store = harvest(model, str(hp), tokens_CT, max_tokens=tokens_CT.numel(), batch_size=batch_size,
                    sink_factor=sink_factor, device=device, progress=progress)
    n_tokens = len(store)
    ctx_N = store.context_N.long()
    n_fit_ctx = min(max(round(linear_fit_fraction * n_ctx), 1), n_ctx - 1) if n_ctx > 1 else 0
    fit_N = ctx_N < n_fit_ctx if n_ctx > 1 else torch.arange(n_tokens) < int(linear_fit_fraction * n_tokens)
    prepared, restore = {}, []
    for name, sae in named.items():
        ready = _prepare(sae, device)
        if isinstance(ready, torch.nn.Module):
            restore.append((ready, ready.training))
            ready.eval()
        prepared[name] = ready
    try:
        rec = {n: ReconstructionAccumulator() for n in named}
        lin = {n: LinearErrorAccumulator() for n in named} if linear else {}
        x_moments = _Moments()
        bar = tqdm(total=n_tokens, unit="tok", disable=not progress,
                   desc=f"reconstruct {hookpoint}: {len(named)} SAE(s)")
        for start in range(0, n_tokens, chunk):
            idx = torch.arange(start, min(start + chunk, n_tokens))
            x_ND = store.get(idx).float()
            x_moments.update(x_ND)
            x_dev_ND = x_ND.to(device)
            fit_sel = fit_N[idx]
            for name, sae in prepared.items():
                out = sae(x_dev_ND)
                x_hat_ND, f_NF = out[0].float(), out[1]
                if not torch.isfinite(x_hat_ND).all():
                    bad = int((~torch.isfinite(x_hat_ND)).any(-1).sum())
                    raise FloatingPointError(f"SAE {name!r} gave non-finite reconstructions for {bad} of "
                                             f"{len(x_ND)} tokens (kept tokens {start}..{start + len(x_ND) - 1})")
                rec[name].update(x_dev_ND, x_hat_ND, f_NF)
                if linear:
                    e_ND = (x_dev_ND - x_hat_ND).cpu()
                    if fit_sel.any():
                        lin[name].update_fit(x_ND[fit_sel], e_ND[fit_sel])
                    if (~fit_sel).any():
                        lin[name].update_eval(x_ND[~fit_sel], e_ND[~fit_sel])
            bar.update(len(idx))
        bar.close()

        # Phase 2: CE with the same tokens for every variant.
        ce_rows = {}
        if ce:
            keep_CT = torch.zeros(n_ctx, T, dtype=torch.bool)
            keep_CT[ctx_N, store.position_N.long()] = True
            ce_rows = ce_metrics(model, prepared, str(hp), tokens_CT, keep_CT, x_moments.mean(),
                                 batch_size=batch_size, device=device, progress=progress)
    finally:
        for module, was_training in restore:
            module.train(was_training)

    info = store.info
    rows = []
    for name in named:
        row = {"sae": name, "model": info.model, "hookpoint": str(hp), "n_tokens": n_tokens,
               "n_dropped": info.dropped_bos + info.dropped_sinks, "n_dropped_bos": info.dropped_bos,
               "n_dropped_sinks": info.dropped_sinks, "n_contexts": n_ctx, "ctx_len": T}
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
