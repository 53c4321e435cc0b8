"""The one interface every SAE kind implements, and its on-disk format.

An SAE is an `nn.Module` with a config dataclass `cfg`. Every kind has
`encode(x_BD) -> f_BF`, `decode(f_BF) -> x_hat_BD`, `forward(x_BD) -> SAEOutput` and
`training_loss(x_BD, ctx) -> LossOutput`; the trainer calls nothing else kind-specific.
Shapes: B tokens, D = d_in, F = width.

Input scaling (METHODS.md): training runs on `s * x`; `fold_input_scale(s)` then folds
`s` into the weights so the saved SAE takes activations in the model's own units.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


@dataclass
class SAEConfig:
    """Fields every kind shares. Kind configs subclass this and add their own."""

    d_in: int
    width: int
    kind: str = ""
    hookpoint: str = ""
    model: str = ""
    input_scale: float = 1.0  # s folded into the weights; 1.0 means "raw units" all along
    decoder_bias: bool = True  # False: b_dec is a zero buffer, not learned (residual SAEs, METHODS.md)
    training: dict = field(default_factory=dict)  # the TrainConfig a trainer used, for the record

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


class SAE(nn.Module):
    """Base class: the standard affine encoder/decoder parameters and save/load.

    Parameters: `W_enc_DF`, `b_enc_F`, `W_dec_FD` (rows are feature directions, kept
    unit-norm during training), `b_dec_D`. Kinds override `encode` (and `training_loss`).
    """

    config_class: ClassVar[type[SAEConfig]] = SAEConfig
    kind: ClassVar[str] = ""
    adam_betas: ClassVar[tuple[float, float]] = (0.9, 0.999)  # the trainer's Adam betas for this kind

    @property
    def lr_scale(self) -> dict[str, float]:
        """Learning-rate multipliers by parameter name (default 1)."""
        return {}

    def __init__(self, cfg: SAEConfig, seed: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__()
        cfg.kind = self.kind
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        W_dec_FD = torch.randn(cfg.width, cfg.d_in, generator=g, dtype=torch.float64)
        W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True)
        self.W_dec_FD = nn.Parameter(W_dec_FD.to(dtype))
        # Tied init (Gao et al.): the encoder starts as the decoder's transpose.
        self.W_enc_DF = nn.Parameter(W_dec_FD.T.contiguous().to(dtype))
        self.b_enc_F = nn.Parameter(torch.zeros(cfg.width, dtype=dtype))
        if cfg.decoder_bias:
            self.b_dec_D = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        else:  # a buffer: saved and loaded like the weights, never trained
            self.register_buffer("b_dec_D", torch.zeros(cfg.d_in, dtype=dtype))

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
                f"{self.kind} SAE takes d_in={self.cfg.d_in} activations, got shape {tuple(x_BD.shape)}"
                + (f" (it was trained on {self.cfg.model} {self.cfg.hookpoint})" if self.cfg.model else "")
            )

    # --- save / load ---------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write `cfg.json` + `sae.safetensors` into `folder`, atomically (temp folder, rename)."""
        with atomic_folder(folder) as tmp:
            write_cfg(tmp, self.cfg)
            save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, tmp / WEIGHTS_FILE)
        return Path(folder)

    def extra_repr(self) -> str:
        return f"d_in={self.cfg.d_in}, width={self.cfg.width}, hookpoint={self.cfg.hookpoint!r}"


@contextmanager
def atomic_folder(folder: str | Path):
    """Yield a temporary folder; on success it replaces `folder` whole, so a crash mid-write
    leaves the old folder (or nothing) in place, never half a new one."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old)
    else:
        os.replace(tmp, folder)


def write_cfg(folder: Path, cfg: SAEConfig) -> None:
    """`cfg.json` with the saelab version that wrote it."""
    from saelab import __version__

    (folder / CFG_FILE).write_text(json.dumps({**cfg.to_dict(), "saelab_version": __version__}, indent=2))


def read_cfg(folder: str | Path) -> dict:
    """The `cfg.json` of a saved SAE folder, with clear errors for a missing or corrupt file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no SAE folder at {folder}")
    cfg_path = folder / CFG_FILE
    if not cfg_path.exists():
        raise FileNotFoundError(f"{folder} is missing {CFG_FILE}: not a saved saelab SAE")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path} is not valid JSON: {err}") from err


def config_from_dict(config_class: type[SAEConfig], raw: dict[str, Any]) -> SAEConfig:
    """Build a config, ignoring keys it does not know (e.g. `saelab_version`)."""
    names = {f.name for f in fields(config_class)}
    return config_class(**{k: v for k, v in raw.items() if k in names})


def read_folder(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(cfg dict, tensors) of a saved SAE, with clear errors for missing or corrupt files."""
    folder = Path(folder)
    cfg = read_cfg(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.exists():
        raise FileNotFoundError(f"{folder} is missing {WEIGHTS_FILE}: not a saved saelab SAE")
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{weights_path} is corrupt or truncated: {err}") from err
    return cfg, tensors


def check_state(sae: SAE, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Names and shapes of `tensors` must be exactly `sae`'s; the error names the mismatch."""
    expected = sae.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not fit a {sae.kind} SAE (missing {missing}, unexpected {unexpected})")
    for name, value in expected.items():
        if tensors[name].shape != value.shape:
            raise ValueError(
                f"{where}: {name} has shape {tuple(tensors[name].shape)} but cfg.json "
                f"(d_in={sae.cfg.d_in}, width={sae.cfg.width}) needs {tuple(value.shape)}"
            )
