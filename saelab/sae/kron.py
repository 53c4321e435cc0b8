"""KronSAE (Kurochkin et al., arXiv 2505.22255): a TopK SAE with a Kronecker-factorised encoder.

The `F = h·m·n` latents are split into `h` heads. Head `g` projects the input to `m`
values `u` and `n` values `v` (both ReLU'd), and latent `(g, i, j)` is `mAND(u[g, i], v[g, j])`,
so the encoder costs `h(m+n)·d` multiply-adds per token instead of a TopK SAE's `F·d`
(`KronSAE.encoder_multiply_adds`). There is no dense `[D, F]` encoder, which at large widths is most
of a TopK SAE's parameters and encoder work. TopK (with AuxK), the decoder and the loss are
`TopKSAE`'s; the training step picks the top k without autograd and recomputes only their
values (`top_latents`), so its backward never touches the `[B, F]` mAND values.

Latent ids: `id = g·m·n + i·n + j` (`latent_to_hmn`, `hmn_to_latent`), i.e. the `[B, h, m, n]`
mAND values reshaped to `[B, F]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from saelab.sae.base import LossOutput, TrainContext, sq_error
from saelab.sae.registry import register
from saelab.sae.topk import TopKConfig, TopKSAE, auxk_loss, topk_loss_output

# kron_shape's preferred m·n per head: 8 × 8 (a quarter of TopK's encoder work) below
# WIDE_WIDTH latents, 16 × 16 (an eighth) from there. Each is the shape on the better EV
# frontier at equal training FLOPs (SmolLM2 resid_post.15, k 32, 65k held-out tokens): width
# 4608, 8 × 8 vs 16 × 16 0.779 vs 0.779 at 0.6 TFLOPs and 0.815 vs 0.799 at 2.5; width 18432,
# 0.787 vs 0.800 (two seeds: 0.8005, 0.8002) at 2.4. The switch lies between those widths.
HEAD_SIZE = 64
WIDE_HEAD_SIZE = 256
WIDE_WIDTH = 16_384


@dataclass
class KronConfig(TopKConfig):
    """`heads`, `m`, `n` with `heads·m·n == width`; left as None they come from `kron_shape`.

    Give all three, `m` and `n` (then `heads = width / (m·n)`), `heads` alone, or none.
    """

    heads: int | None = None
    m: int | None = None
    n: int | None = None
    # "encoder": row (g, i, j) starts as (p_i + q_j) normalised, a direction in which both u_i
    # and v_j grow (the steepest for mAND when |p_i| = |q_j|): KronSAE's analogue of TopK's
    # tied init. "random": unit-norm Gaussian rows, unrelated to the encoder. Measured (SmolLM2
    # resid_post.15, width 4608, k 32, 149k tokens): EV 0.653 vs 0.554 at the sparsify lr,
    # 0.779 vs 0.773 at 8x it, where random rows leave 5.3% of latents dead (0.02%).
    decoder_init: str = "encoder"

    def __post_init__(self):
        super().__post_init__()
        if (self.m is None) != (self.n is None):
            raise ValueError(f"give both m and n, or neither (got m={self.m}, n={self.n})")
        if self.m is not None and min(self.m, self.n) < 1:
            raise ValueError(f"m and n must be >= 1, got m={self.m}, n={self.n}")
        if self.decoder_init not in ("random", "encoder"):
            raise ValueError(f"decoder_init is 'random' or 'encoder', got {self.decoder_init!r}")
        if self.m is None:
            self.heads, self.m, self.n = kron_shape(self.width, self.heads)
        elif self.heads is None:
            self.heads = self.width // (self.m * self.n)
        if self.heads * self.m * self.n != self.width:
            raise ValueError(
                f"a KronSAE needs width == heads·m·n, got width {self.width} with "
                f"heads={self.heads}, m={self.m}, n={self.n} ({self.heads * self.m * self.n})"
            )


def mand(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Smooth AND: `√(a·b)` where `a > 0` and `b > 0`, else 0 (docs/methods.md, "KronSAE").

    Computed as `√a⁺ · √b⁺` (equal to `√(a·b)` on the positive quadrant, 0 off it): the square
    roots then run on the broadcast factors, `[B, h, m, 1]` and `[B, h, 1, n]`, and only one
    product is `[B, F]`: `topk_codes(pre_acts(x))` forward + backward at width 18432 took 0.44 s
    instead of 0.77 s with `where(a > 0 & b > 0, √(a·b), 0)` on `[B, F]` (batch 1024, 1 thread).
    `_safe_sqrt` keeps every gradient finite.
    """
    return _safe_sqrt(a) * _safe_sqrt(b)


def outer_mand(u_BHM: torch.Tensor, v_BHN: torch.Tensor) -> torch.Tensor:
    """`[B, F]` with latent `g·m·n + i·n + j` = `mand(u[:, g, i], v[:, g, j])`."""
    return mand(u_BHM.unsqueeze(-1), v_BHN.unsqueeze(-2)).flatten(-3)


def _safe_sqrt(t: torch.Tensor) -> torch.Tensor:
    """`√t` for `t > 0`, else 0, with a finite gradient everywhere (0 where `t <= 0`).

    The root only sees `t` clamped to the smallest normal number, so its derivative is
    finite also at `t = 0`; `where` then gives exactly zero value and gradient there.
    """
    return torch.where(t > 0, t.clamp_min(torch.finfo(t.dtype).tiny).sqrt(), 0.0)


def _square_split(size: int) -> tuple[int, int] | None:
    """(m, n) with m·n == size, m <= n <= 4m and m >= 2, as square as possible; None if there
    is none."""
    m = max(d for d in range(1, math.isqrt(size) + 1) if size % d == 0)
    n = size // m
    return (m, n) if m >= 2 and n <= 4 * m else None


def kron_shape(width: int, heads: int | None = None) -> tuple[int, int, int]:
    """(h, m, n) with `h·m·n == width` exactly.

    Rule (saelab's): each head is a small near-square `m × n` block (`2 <= m <= n <= 4m`, so
    both factors do work). Without `heads`, the head size `m·n` is the divisor of `width`
    nearest `HEAD_SIZE` = 64 (log scale; ties to the larger) that splits so, or nearest
    `WIDE_HEAD_SIZE` = 256 from `WIDE_WIDTH` = 16,384 latents on: the encoder then does
    `1/m + 1/n` = about 1/4 (1/8) of a TopK encoder's multiply-adds. With `heads`, the head
    size is `width / heads`. E.g. 4608 -> (72, 8, 8), 18432 -> (72, 16, 16), 65536 -> (256, 16,
    16).
    ValueError when no such factorisation exists (a prime width, say).
    """
    if heads is not None:
        split = _square_split(width // heads) if heads >= 1 and width % heads == 0 else None
        if split is None:
            raise ValueError(
                f"width {width} with {heads} heads has no m·n = width/heads with 2 <= m <= n <= 4m"
            )
        return heads, *split
    sizes = [p for p in range(4, width + 1) if width % p == 0 and _square_split(p) is not None]
    if not sizes:
        raise ValueError(
            f"width {width} has no factorisation h·m·n with 2 <= m <= n <= 4m: pick another width"
        )
    preferred = WIDE_HEAD_SIZE if width >= WIDE_WIDTH else HEAD_SIZE
    size = min(sizes, key=lambda p: (abs(math.log(p / preferred)), -p))
    return width // size, *_square_split(size)


def latent_to_hmn(latent: int | torch.Tensor, m: int, n: int):
    """(head g, u index i, v index j) of latent id(s) `g·m·n + i·n + j`."""
    return latent // (m * n), latent % (m * n) // n, latent % n


def hmn_to_latent(
    g: int | torch.Tensor, i: int | torch.Tensor, j: int | torch.Tensor, m: int, n: int
):
    """The latent id `g·m·n + i·n + j` of head g, u index i, v index j."""
    return g * m * n + i * n + j


@register
class KronSAE(TopKSAE):
    """Parameters: `W_P_DHM`, `b_P_HM` (the h heads' P_g ∈ R^{d×m} side by side), `W_Q_DHN`,
    `b_Q_HN`, and the base class's `W_dec_FD`, `b_dec_D`."""

    config_class = KronConfig
    kind = "kron"

    def init_encoder(self, W_dec_FD: torch.Tensor, seed: int, dtype: torch.dtype) -> None:
        """The h heads' P and Q, Gaussian with std 1/√D, zero biases (no tied init: there is
        no `[D, F]` encoder to tie)."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + 1)  # a stream apart from W_dec's
        cfg = self.cfg
        D, h, m, n = cfg.d_in, cfg.heads, cfg.m, cfg.n
        # 1/√D: u, v pre-activations ~ N(0, 1) for unit-variance inputs (the trainer's scaling).
        self.W_P_DHM = nn.Parameter(
            (torch.randn(D, h * m, generator=g, dtype=torch.float64) / math.sqrt(D)).to(dtype)
        )
        self.W_Q_DHN = nn.Parameter(
            (torch.randn(D, h * n, generator=g, dtype=torch.float64) / math.sqrt(D)).to(dtype)
        )
        self.b_P_HM = nn.Parameter(torch.zeros(h * m, dtype=dtype))
        self.b_Q_HN = nn.Parameter(torch.zeros(h * n, dtype=dtype))
        if cfg.decoder_init == "encoder":
            P_HMD = self.W_P_DHM.detach().double().T.reshape(h, m, 1, D)
            Q_HND = self.W_Q_DHN.detach().double().T.reshape(h, 1, n, D)
            rows_FD = (P_HMD + Q_HND).reshape(h * m * n, D)
            rows_FD = rows_FD / rows_FD.norm(dim=1, keepdim=True)
            # contiguous: the broadcast sum is laid out column-major (stride (1, F)), and the
            # sparse decoder's embedding_bag over such rows made the whole step 2x slower
            self.W_dec_FD.data = rows_FD.to(dtype).contiguous()

    def encoder_multiply_adds(self) -> int:
        """`h(m+n)·d` per token, against a dense encoder's `F·d`. The `F` mAND square roots
        are left out: they are elementwise, like the TopK selection over `F` both kinds do."""
        return self.cfg.heads * (self.cfg.m + self.cfg.n) * self.cfg.d_in

    def head_acts(self, x_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u `[B, h, m]`, v `[B, h, n]`): `ReLU((x - b_dec) P + b_P)` and likewise for Q.

        Centred on b_dec like TopK's encoder, and computed as `x P + (b_P - b_dec P)` for the
        same reason as `SAE.pre_acts` (b_dec's gradient is then a vector product).
        """
        cfg = self.cfg
        u_BHM = (x_BD @ self.W_P_DHM + (self.b_P_HM - self.b_dec_D @ self.W_P_DHM)).relu()
        v_BHN = (x_BD @ self.W_Q_DHN + (self.b_Q_HN - self.b_dec_D @ self.W_Q_DHN)).relu()
        return u_BHM.unflatten(-1, (cfg.heads, cfg.m)), v_BHN.unflatten(-1, (cfg.heads, cfg.n))

    def pre_acts(self, x_BD: torch.Tensor) -> torch.Tensor:
        """The `[B, F]` mAND values, latent `g·m·n + i·n + j` = `mAND(u[g, i], v[g, j])`."""
        return outer_mand(*self.head_acts(x_BD))

    def top_latents(
        self, u_BHM: torch.Tensor, v_BHN: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`topk_codes(pre_acts(x), k)`, the same numbers, with a backward of O(B·k) instead of
        O(B·F).

        The k latents are chosen without autograd and their values recomputed from the k
        (u, v) pairs, so the `[B, F]` mAND values are never kept for, nor reached by, the
        backward: 43% less encoder time at width 65536 (benchmarks/encoders.py, 1 thread).
        """
        with torch.no_grad():
            idx_BK = outer_mand(u_BHM, v_BHN).topk(k, dim=-1, sorted=False).indices
        g_BK, i_BK, j_BK = latent_to_hmn(idx_BK, self.cfg.m, self.cfg.n)
        u_BK = u_BHM.flatten(-2).gather(-1, g_BK * self.cfg.m + i_BK)
        v_BK = v_BHN.flatten(-2).gather(-1, g_BK * self.cfg.n + j_BK)
        return mand(u_BK, v_BK), idx_BK

    def training_loss(self, x_BD: torch.Tensor, ctx: TrainContext) -> LossOutput:
        """`TopKSAE.training_loss` with `top_latents`; AuxK, when latents are dead, ranks them
        by the full `[B, F]` mAND values (with their gradient, O(B·F) as for TopK)."""
        u_BHM, v_BHN = self.head_acts(x_BD)
        values_BK, idx_BK = self.top_latents(u_BHM, v_BHN, self.cfg.k)
        x_hat_BD = self.decode_kept(values_BK, idx_BK)
        mse = sq_error(x_BD, x_hat_BD)
        aux = mse.new_zeros(())
        if ctx.dead_F is not None and bool(ctx.dead_F.any()):  # only then the [B, F] mAND values
            aux = auxk_loss(self, outer_mand(u_BHM, v_BHN), (x_BD - x_hat_BD).detach(), ctx.dead_F)
        return topk_loss_output(self.cfg, mse, mse, aux, values_BK, idx_BK)

    @torch.no_grad()
    def fold_input_scale(self, s: float) -> None:
        """`(x - b_dec/s)(s P) + b_P = (s x - b_dec) P + b_P`: u, v and the codes are unchanged,
        and the decoder output is divided by s."""
        self.W_P_DHM *= s
        self.W_Q_DHN *= s
        self.W_dec_FD /= s
        self.b_dec_D /= s
        self.cfg.input_scale *= s
