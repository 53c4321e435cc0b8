"""Linear residual error ("dark matter", Engels et al. arXiv 2410.14670).

How much of an SAE's error e = x − x̂ is a linear function of x: fit e ≈ x A + c on some
tokens, score it on held-out ones. The maths is docs/methods.md, "Metrics" ("### Linear
residual error"). The fit and the scores stream over batches in float64.
"""

from __future__ import annotations

import warnings

import torch

from saelab.metrics.reconstruction import Moments, ratio

RIDGE_START = 1e-12  # first ridge (x mean variance) tried when Cov(x) is singular

LINEAR_COLUMNS = ["linear_error_r2", "linear_error_fvu", "nonlinear_error_fvu"]


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
        self.e = Moments()  # held-out e
        self.x = Moments()  # held-out x
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
            warnings.warn(
                f"linear error: {n} fit tokens for {self.sxx_DD.shape[0]} dims; the fit "
                "is underdetermined and the held-out R² will be low",
                stacklevel=4,
            )
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
            raise FloatingPointError(
                "linear error: the covariance of x is not positive "
                f"definite even with a ridge of {ridge:.3g}; are the "
                "activations finite?"
            )
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
        sum_D = d_ND.sum(0)
        self.e_hat_sum_D = sum_D if self.e_hat_sum_D is None else self.e_hat_sum_D + sum_D
        self.e_hat_sq += float(d_ND.pow(2).sum())

    def result(self) -> dict:
        """linear_error_r2, linear_error_fvu, nonlinear_error_fvu (held-out), and the token
        counts linear_fit_tokens, linear_heldout_tokens."""
        n = self.e.n
        if n == 0:
            raise ValueError("linear error: no held-out tokens")
        e_bar_minus_shift_D = self.e.sum_D / n  # ē − s_e
        # Σ‖ê − ē‖² = Σ‖ê − s‖² − 2 (ē − s)·Σ(ê − s) + n‖ē − s‖²
        lin_sq = (
            self.e_hat_sq
            - 2 * float(e_bar_minus_shift_D @ self.e_hat_sum_D)
            + n * float(e_bar_minus_shift_D.pow(2).sum())
        )
        x_var = self.x.sq_dev()
        return {
            "linear_error_r2": 1.0 - ratio(self.sq_resid, self.e.sq_dev()),
            "linear_error_fvu": ratio(lin_sq, x_var),
            "nonlinear_error_fvu": ratio(self.sq_resid, x_var),
            "linear_fit_tokens": self.n_fit,
            "linear_heldout_tokens": n,
        }


def linear_error(
    x_ND: torch.Tensor,
    e_ND: torch.Tensor,
    fit_fraction: float = 0.5,
    fit_N: torch.Tensor | None = None,
    chunk: int = 8192,
) -> dict:
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
        raise ValueError(
            f"linear error needs fit and held-out tokens; got {int(fit_N.sum())} of {n} to fit"
        )
    acc = LinearErrorAccumulator()
    fit_idx, eval_idx = fit_N.nonzero().squeeze(1), (~fit_N).nonzero().squeeze(1)
    for idx_N, update in ((fit_idx, acc.update_fit), (eval_idx, acc.update_eval)):
        for start in range(0, len(idx_N), chunk):
            sel = idx_N[start : start + chunk]
            update(x_ND[sel], e_ND[sel])
    return acc.result()
