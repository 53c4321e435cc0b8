"""The one interface every SAE kind implements, and its on-disk format.

An SAE is an `nn.Module` with a config dataclass `cfg`. Every kind has
`encode(x_BD) -> f_BF`, `decode(f_BF) -> x_hat_BD`, `forward(x_BD) -> SAEOutput` and
`training_loss(x_BD, ctx) -> LossOutput`, and says what the rest of saelab needs to know
about it (its sparsity option, training defaults, encoder cost, whether it is composite),
so code outside `sae/` never asks `hasattr` of an SAE. Shapes: B tokens, D = d_in, F = width.

Input scaling (docs/methods.md, "Input scaling and dropped positions"): training runs on
`s * x`; `fold_input_scale(s)` then folds `s` into the weights so the saved SAE takes
activations in the model's own units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from saelab.io import atomic_folder, write_safetensors
from saelab.sae.folder import (
    CFG_FILE,
    WEIGHTS_FILE,
    check_decoder,
    check_sparsity,
    check_state,
    checked_config,
    read_folder,
    write_cfg,
)


@dataclass
class SAEConfig:
    """Fields every kind shares. Kind configs subclass this and add their own."""

    d_in: int
    width: int
    kind: str = ""
    hookpoint: str = ""
    model: str = ""
    input_scale: float = 1.0  # s folded into the weights; 1.0 means "raw units" all along
    decoder_bias: bool = True  # False: b_dec is a zero buffer, not learned (residual SAEs)
    training: dict = field(default_factory=dict)  # the TrainConfig a trainer used, for the record
    neuronpedia_id: str = ""  # e.g. "gemma-2-2b/12-gemmascope-res-16k": dashboards link to it
    # Where a loaded foreign SAE came from (saelab.interop): format, file, its own hook name
    source: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class SAEOutput(NamedTuple):
    """What `forward` returns."""

    x_hat: torch.Tensor  # [B, D] reconstruction
    f: torch.Tensor  # [B, F] latent activations (dense, mostly zeros)


class LossOutput(NamedTuple):
    """What `training_loss` returns; `terms` holds floats for logging (e.g. auxk, l0_penalty)."""

    loss: torch.Tensor  # scalar to backpropagate
    mse: torch.Tensor  # scalar, mean over tokens of ||x - x_hat||^2 (detached)
    l0: torch.Tensor  # scalar, mean active latents per token (detached)
    fired_F: torch.Tensor  # [F] bool, latents that fired on this batch (dead tracking)
    terms: dict


class TrainContext(NamedTuple):
    """What the trainer tells a kind's loss about the run."""

    step: int
    n_steps: int
    dead_F: torch.Tensor | None = None  # [F] bool, no firing for `dead_tokens` tokens


def sq_error(x_BD: torch.Tensor, x_hat_BD: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the squared L2 error: the reconstruction term of every kind."""
    return (x_hat_BD - x_BD).pow(2).sum(-1).mean()


def fires(f_BF: torch.Tensor) -> torch.Tensor:
    """Bool `[B, F]`: where a latent fires. saelab's one definition: its code is non-zero.

    Every kind's codes are >= 0, so this is also `f > 0`; training, metrics, feature
    statistics and figures all count firing through this function.
    """
    return f_BF != 0


def check_fits(
    cfg: SAEConfig,
    where: str = "this SAE",
    d_in: int | None = None,
    d_in_of: str = "the input's width",
    hookpoint: str | None = None,
) -> None:
    """The one "does this SAE fit" check: `d_in` (named by `d_in_of`, e.g. "the model's
    hidden size") must be the SAE's, and `hookpoint` (when both are known) the one it was
    trained on. ValueError naming `where` and the mismatch."""
    if d_in is not None and d_in != cfg.d_in:
        trained = (
            f" (trained on {cfg.model or 'an unknown model'} {cfg.hookpoint})"
            if cfg.hookpoint
            else ""
        )
        raise ValueError(
            f"{where} takes d_in={cfg.d_in} activations{trained}, but {d_in_of} is {d_in}"
        )
    if hookpoint and cfg.hookpoint and str(hookpoint) != cfg.hookpoint:
        raise ValueError(f"{where} was trained on {cfg.hookpoint}, not {hookpoint}")


class SAE(nn.Module):
    """Base class: the standard affine encoder/decoder parameters, kind knowledge, save/load.

    Parameters: `W_enc_DF`, `b_enc_F`, `W_dec_FD` (rows are feature directions, kept
    unit-norm during training), `b_dec_D`. Kinds override `encode` and `training_loss`, and
    `init_encoder` when their encoder is not the dense one (KronSAE).
    """

    config_class: ClassVar[type[SAEConfig]] = SAEConfig
    kind: ClassVar[str] = ""
    adam_betas: ClassVar[tuple[float, float]] = (
        0.9,
        0.999,
    )  # the trainer's Adam betas for this kind
    composite: ClassVar[bool] = (
        False  # True: built from trained SAEs (residual), not trained as one
    )
    training_defaults: ClassVar[dict] = {}  # `train_sae` options this kind trains best with
    sparsity_field: ClassVar[str | None] = None  # the config field that sets the L0 (k, target_l0)

    def lr_scales(self, lr: float) -> dict[str, float]:
        """Multipliers of the base rate `lr` by parameter name (default 1)."""
        return {}

    def __init__(self, cfg: SAEConfig, seed: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__()
        cfg.kind = self.kind
        self.cfg = cfg
        self.init_parameters(seed, dtype)

    def init_parameters(self, seed: int, dtype: torch.dtype) -> None:
        """Random unit-norm decoder rows, the encoder from `init_encoder`, `b_dec` = 0."""
        g = torch.Generator().manual_seed(seed)
        W_dec_FD = torch.randn(self.cfg.width, self.cfg.d_in, generator=g, dtype=torch.float64)
        W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True)
        self.W_dec_FD = nn.Parameter(W_dec_FD.to(dtype))
        self.init_encoder(W_dec_FD, seed, dtype)
        if self.cfg.decoder_bias:
            self.b_dec_D = nn.Parameter(torch.zeros(self.cfg.d_in, dtype=dtype))
        else:  # a buffer: saved and loaded like the weights, never trained
            self.register_buffer("b_dec_D", torch.zeros(self.cfg.d_in, dtype=dtype))

    def init_encoder(self, W_dec_FD: torch.Tensor, seed: int, dtype: torch.dtype) -> None:
        """Tied init (Gao et al.): the encoder starts as the decoder's transpose, `b_enc` = 0."""
        self.W_enc_DF = nn.Parameter(W_dec_FD.T.contiguous().to(dtype))
        self.b_enc_F = nn.Parameter(torch.zeros(self.cfg.width, dtype=dtype))

    # --- what the rest of saelab asks of a kind -------------------------------------------
    @classmethod
    def sparsity_option(cls, target_l0: float) -> dict:
        """The `train_sae` option that asks this kind for L0 `target_l0` (`{"k": 32}`, ...)."""
        if cls.sparsity_field == "k":
            return {"k": int(target_l0)}
        if cls.sparsity_field is not None:
            return {cls.sparsity_field: target_l0}
        raise ValueError(
            f"a {cls.kind} SAE has no option that sets its L0; kinds that have one: "
            "jumprelu (target_l0), topk, batchtopk, hierarchical_topk, kron (k)"
        )

    @property
    def target_l0(self) -> float | None:
        """The L0 this SAE was asked for (None when its kind has no such option)."""
        return None if self.sparsity_field is None else getattr(self.cfg, self.sparsity_field)

    def encoder_multiply_adds(self) -> int:
        """Encoder multiply-adds per token (FLOPs are twice this): `F·d` for a dense encoder."""
        return self.cfg.width * self.cfg.d_in

    def at_k(self, k: int) -> nn.Module:
        """This SAE served at sparsity `k` (TopK family only)."""
        raise ValueError(
            f"a {self.kind} SAE has a fixed sparsity; serving it at another k needs a "
            "TopK-family SAE (topk, hierarchical_topk, kron)"
        )

    def latent_label(self, latent: int) -> str:
        """How dashboards name a latent."""
        return f"latent {int(latent)}"

    # --- the interface -------------------------------------------------------------------
    def pre_acts(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations `[B, F]`: `(x - b_dec) W_enc + b_enc`.

        Computed as `x W_enc + (b_enc - b_dec W_enc)`: the same map, but b_dec's gradient
        is then a vector product instead of a second [B, F] x [F, D] matmul (1/6 of a
        dense step's work).
        """
        return x_BD @ self.W_enc_DF + (self.b_enc_F - self.b_dec_D @ self.W_enc_DF)

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, f_BF: torch.Tensor) -> torch.Tensor:
        """`f W_dec + b_dec`, `[B, D]`."""
        return f_BF @ self.W_dec_FD + self.b_dec_D

    def forward(self, x_BD: torch.Tensor) -> SAEOutput:
        self.check_input(x_BD)
        f_BF = self.encode(x_BD)
        return SAEOutput(self.decode(f_BF), f_BF)

    def training_loss(self, x_BD: torch.Tensor, ctx: TrainContext) -> LossOutput:
        raise NotImplementedError

    # --- training helpers ----------------------------------------------------------------
    @torch.no_grad()
    def init_from_sample(self, sample_ND: torch.Tensor) -> None:
        """Data-dependent init before training (sample in the space the SAE is trained in).

        Base: `b_dec` = the sample mean (kept at zero without a decoder bias). Kinds with
        thresholds override this.
        """
        if self.cfg.decoder_bias:
            self.b_dec_D.copy_(sample_ND.mean(0).to(self.b_dec_D))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (after each optimiser step)."""
        self.W_dec_FD /= self.W_dec_FD.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the gradient component parallel to each (unit) decoder row, before the step."""
        grad = self.W_dec_FD.grad
        if grad is not None:
            grad -= (grad * self.W_dec_FD).sum(1, keepdim=True) * self.W_dec_FD

    @torch.no_grad()
    def fold_input_scale(self, s: float) -> None:
        """Make the SAE take raw activations `x` after training on `s * x`.

        `pre` is unchanged for `(x - b_dec/s)(s W_enc)`, so thresholds stay as they are;
        the decoder output is divided by s.
        """
        self.W_enc_DF *= s
        self.W_dec_FD /= s
        self.b_dec_D /= s
        self.cfg.input_scale *= s

    # --- checks --------------------------------------------------------------------------
    def check_input(self, x_BD: torch.Tensor) -> None:
        if x_BD.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"{self.kind} SAE takes d_in={self.cfg.d_in} activations, "
                f"got shape {tuple(x_BD.shape)}"
                + (
                    f" (it was trained on {self.cfg.model} {self.cfg.hookpoint})"
                    if self.cfg.model
                    else ""
                )
            )

    # --- save / load ---------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write `cfg.json` + `sae.safetensors` into `folder`, atomically (temp folder, swap):
        a crash or a full disk leaves the previous `folder` whole."""
        with atomic_folder(folder) as tmp:
            write_cfg(tmp, self.cfg)
            write_safetensors(tmp / WEIGHTS_FILE, self.state_dict())
        return Path(folder)

    @classmethod
    def load_folder(cls, folder: str | Path) -> SAE:
        """The SAE saved in `folder`, bit for bit (its dtype is the file's).

        `SAEFileError` naming the file for a config or weights that do not describe a
        `cls` SAE, checked before anything is allocated from the config's sizes.
        """
        raw, tensors = read_folder(folder)
        cfg = checked_config(cls.config_class, raw, str(Path(folder) / CFG_FILE))
        where = str(Path(folder) / WEIGHTS_FILE)
        dtype = check_decoder(cfg, tensors, where)
        check_sparsity(cfg, cls.sparsity_field, str(Path(folder) / CFG_FILE))
        sae = cls(cfg, dtype=dtype)
        check_state(sae, tensors, where)
        sae.load_state_dict(tensors)
        return sae

    def extra_repr(self) -> str:
        return f"d_in={self.cfg.d_in}, width={self.cfg.width}, hookpoint={self.cfg.hookpoint!r}"
