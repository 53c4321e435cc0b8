"""BatchTopK SAE (Bussmann et al., arXiv 2412.06410).

Training keeps the top `k * B` ReLU'd pre-activations over the whole batch, so tokens
share a budget of `k` active latents on average. A running threshold θ (the mean over
late steps of the smallest kept positive activation) replaces the batch at inference:
`f_i = pre_i * 1[pre_i > θ]`, so a token's code does not depend on its batch.
θ lives in pre-activation space, which `fold_input_scale` leaves unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saelab.sae.base import SAE, LossOutput, TrainContext, fires, sq_error
from saelab.sae.registry import register
from saelab.sae.topk import TopKConfig, auxk_loss, scatter_codes


@dataclass
class BatchTopKConfig(TopKConfig):
    """TopK's fields (`k` is the mean active latents per token over a batch); `sparse_decoder`
    only picks AuxK's decoder path: the main code is a dense `[B, F]` batch selection."""

    threshold_warmup_steps: int = 100  # early steps, while the SAE moves fast, are not averaged
    # θ averages the batch minima of the last `threshold_average_last` of the steps only (and
    # never those before `threshold_warmup_steps`). Averaging from step 100 on (1.0) mixes in
    # minima of weights that have since moved: at k 32, width 4608, 150k SmolLM2 tokens the
    # inference L0 was ~20. dictionary_learning's EMA (β 0.999 from step 1000) has the same
    # lag in runs of a few hundred steps. The last 20% is the lr decay, where weights settle.
    threshold_average_last: float = 0.2


def batch_topk_codes(pre_BF: torch.Tensor, k: int) -> torch.Tensor:
    """Dense `[B, F]` codes keeping the `k * B` largest ReLU'd pre-activations of the batch."""
    B, F = pre_BF.shape
    values_K, idx_K = pre_BF.relu().flatten().topk(k * B, sorted=False)
    return scatter_codes(values_K[None], idx_K[None], B * F).view(B, F)


@register
class BatchTopKSAE(SAE):
    config_class = BatchTopKConfig
    kind = "batchtopk"

    sparsity_field = "k"

    def __init__(self, cfg: BatchTopKConfig, seed: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__(cfg, seed=seed, dtype=dtype)
        # Buffers, so they are saved with the weights; the count makes a resumed mean exact.
        # Both are float (the weights' dtype): `load_sae` takes its dtype from the file.
        self.register_buffer("threshold", torch.zeros((), dtype=dtype))
        self.register_buffer("threshold_count", torch.zeros((), dtype=dtype))

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        pre_BF = self.pre_acts(x_BD)
        return torch.where(pre_BF > self.threshold, pre_BF, 0.0)

    @torch.no_grad()
    def update_threshold(self, f_BF: torch.Tensor, step: int, n_steps: int) -> None:
        """Fold this batch's smallest kept positive activation into the running mean θ.

        Before the averaging start (`threshold_warmup_steps`, or the start of the last
        `threshold_average_last` of the `n_steps`, whichever is later) θ just follows the
        latest batch (usable, but not averaged); from then on it is the mean.
        """
        kept = f_BF[f_BF > 0]
        if kept.numel() == 0:
            return
        start = int(n_steps * (1 - self.cfg.threshold_average_last))
        if step >= max(self.cfg.threshold_warmup_steps, start):
            self.threshold_count += 1
        self.threshold += (kept.min() - self.threshold) / self.threshold_count.clamp_min(1)

    def training_loss(self, x_BD: torch.Tensor, ctx: TrainContext) -> LossOutput:
        pre_BF = self.pre_acts(x_BD)
        f_BF = batch_topk_codes(pre_BF, self.cfg.k)
        self.update_threshold(f_BF, ctx.step, ctx.n_steps)
        x_hat_BD = self.decode(f_BF)
        mse = sq_error(x_BD, x_hat_BD)
        aux = auxk_loss(self, pre_BF, (x_BD - x_hat_BD).detach(), ctx.dead_F)
        active_BF = fires(f_BF)
        return LossOutput(
            mse + self.cfg.aux_coef * aux,
            mse.detach(),
            active_BF.sum(-1).float().mean(),
            active_BF.any(0),
            {"auxk": aux.detach().item(), "threshold": self.threshold.item()},
        )
