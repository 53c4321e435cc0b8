"""Reconstruction metrics: mse, FVU about the mean, explained variance, L0, dead / dense latents.

The maths is docs/methods.md, "Metrics" ("### Reconstruction"). Sums are float64 and
stream over batches, so an evaluation set of 100k tokens x 576 dims never needs a dense
`[N, F]` code matrix: latent firing (`saelab.sae.fires`) is kept as one count per latent.
"""

from __future__ import annotations

import math

import torch

from saelab.sae import fires

DENSE_THRESHOLD = 0.1  # a latent firing on more than this share of tokens counts as dense

RECONSTRUCTION_COLUMNS = [
    "mse",
    "fvu",
    "explained_variance",
    "l0",
    "dead_fraction",
    "dense_fraction",
]


def ratio(num: float, den: float) -> float:
    """num / den, NaN when the denominator is not positive (e.g. an error that is exactly 0)."""
    return num / den if den > 0 else math.nan


class Moments:
    """Streaming Σ(x − s) and Σ‖x − s‖² in float64, with the shift `s` = the first batch's mean.

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
        """x̄ (float64) over everything seen."""
        return self.shift_D + self.sum_D / self.n

    def sq_dev(self) -> float:
        """Σ‖x − x̄‖² over everything seen."""
        return self.sq - float(self.sum_D.pow(2).sum()) / self.n


class ReconstructionAccumulator:
    """Reconstruction metrics over batches of (x, x̂, f); `result()` gives the dict.

    Keeps float64 sums and one int64 fire count per latent, never the codes themselves.
    """

    def __init__(self, width: int | None = None, dense_threshold: float = DENSE_THRESHOLD):
        self.width = width
        self.dense_threshold = dense_threshold
        self.x = Moments()
        self.sq_err = 0.0
        self.n_active = 0
        self.fires_F = None if width is None else torch.zeros(width, dtype=torch.int64)

    @torch.no_grad()
    def update(self, x_ND: torch.Tensor, x_hat_ND: torch.Tensor, f_NF: torch.Tensor) -> None:
        if x_ND.shape != x_hat_ND.shape or len(f_NF) != len(x_ND):
            raise ValueError(
                f"shapes do not match: x {tuple(x_ND.shape)}, "
                f"x_hat {tuple(x_hat_ND.shape)}, f {tuple(f_NF.shape)}"
            )
        if self.fires_F is None:
            self.fires_F = torch.zeros(f_NF.shape[-1], dtype=torch.int64)
        active_NF = fires(f_NF)
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
        fvu = ratio(self.sq_err, self.x.sq_dev())
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


def reconstruction_metrics(
    x_ND: torch.Tensor,
    x_hat_ND: torch.Tensor,
    f_NF: torch.Tensor,
    dense_threshold: float = DENSE_THRESHOLD,
) -> dict:
    """The reconstruction metrics of one in-memory set of tokens.

    mse = mean ‖x − x̂‖²; fvu = Σ‖x − x̂‖² / Σ‖x − x̄‖² with x̄ the mean over these tokens
    (not about zero); explained_variance = 1 − fvu; l0 = mean firing latents per token;
    dead_fraction = share of latents never firing here; dense_fraction = share firing on
    more than `dense_threshold` of the tokens. For streams use `ReconstructionAccumulator`.
    """
    acc = ReconstructionAccumulator(f_NF.shape[-1], dense_threshold)
    acc.update(x_ND, x_hat_ND, f_NF)
    return acc.result()
