"""What `train_sae` derives from its config: the learning rate and its schedule, the batch
stream and the input scale (docs/methods.md, "Training loop")."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# Runs of fewer steps than this get a larger learning rate than the sparsify scaling (see
# `default_learning_rate`); 64 × 290, so the boost is 8 at 290 steps.
SHORT_RUN_STEPS = 18_560
MAX_SHORT_RUN_BOOST = 8.0
MAX_BOOSTED_LR = 3e-3  # the largest rate measured good (width 4608 at 290 steps)


def default_learning_rate(width: int, n_steps: int) -> float:
    """`2e-4 / √(F / 16384)` (the sparsify scaling, for long runs) × `√(SHORT_RUN_STEPS /
    n_steps)`, clipped to [1, 8]; the boost never takes the rate above 3e-3 (narrow SAEs start
    high: 2.3e-3 at width 128).

    Adam moves a weight by about lr per step, so a run of a few hundred steps at the sparsify
    rate ends near its initialisation. Measured on SmolLM2 resid_post.15 (TopK k 32, batch
    512, 65k held-out tokens): at 290 steps EV 0.677 / 0.739 / 0.782 / 0.804 / 0.797 at ×1 / 2
    / 4 / 8 / 16 (width 4608; dead 3.5% at ×8, 32% at ×16) and 0.563 / 0.740 / 0.791 at ×1 / 4
    / 8 (width 18432); at 1160 steps 0.833 / 0.849 at ×2 / 4 (width 4608).
    """
    boost = min(MAX_SHORT_RUN_BOOST, max(1.0, math.sqrt(SHORT_RUN_STEPS / max(1, n_steps))))
    sparsify = sparsify_learning_rate(width)
    return max(sparsify, min(sparsify * boost, MAX_BOOSTED_LR))


def sparsify_learning_rate(width: int) -> float:
    """`2e-4 / √(F / 16384)`: sparsify's (and Gao et al.'s) rate for long runs."""
    return 2e-4 / math.sqrt(width / 16384)


@dataclass
class TrainConfig:
    """Everything that decides the trained weights (recorded in the SAE's cfg.json)."""

    kind: str = "topk"
    width: int = 4608
    max_tokens: int | None = None  # None: one pass over the store
    batch_size: int = 512
    # None: `default_learning_rate(width, n_steps)`; "sparsify": 2e-4 / √(F / 16384) at any length
    lr: float | str | None = None
    warmup_steps: int = 50
    decay_frac: float = 0.2
    dead_tokens: int = 50_000
    scale_sample: int = 20_000  # tokens used to estimate the input scale and b_dec
    seed: int = 0
    options: dict = field(default_factory=dict)  # the kind's config fields (k, target_l0, ...)

    def __post_init__(self):
        if isinstance(self.lr, str) and self.lr != "sparsify":
            raise ValueError(f"lr is a number, None or 'sparsify', got {self.lr!r}")

    def n_steps(self, n_available: int) -> int:
        return max(1, (self.max_tokens or n_available) // self.batch_size)

    def learning_rate(self, n_steps: int) -> float:
        if self.lr == "sparsify":
            return sparsify_learning_rate(self.width)
        return self.lr if self.lr is not None else default_learning_rate(self.width, n_steps)


def lr_factor(step: int, n_steps: int, warmup_steps: int, decay_frac: float) -> float:
    """Linear warm-up from 0, flat, then linear decay to 0 over the last `decay_frac` of steps."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    decay_start = int(n_steps * (1 - decay_frac))
    decay = (
        1.0 if step < decay_start else max(0.0, (n_steps - step) / max(1, n_steps - decay_start))
    )
    return warm * decay


def batch_indices(step: int, n_tokens: int, batch_size: int, seed: int) -> torch.Tensor:
    """Token indices of batch `step`: epoch e is a fresh permutation seeded by (seed, e)."""
    per_epoch = max(1, n_tokens // batch_size)
    epoch, j = divmod(step, per_epoch)
    perm = torch.randperm(
        n_tokens, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    )
    return perm[j * batch_size : (j + 1) * batch_size].sort().values


def estimate_input_scale(sample_ND: torch.Tensor) -> float:
    """s with E||s x||^2 = d_in."""
    return math.sqrt(sample_ND.shape[1] / sample_ND.double().pow(2).sum(1).mean().item())
