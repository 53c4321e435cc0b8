"""Residual SAEs (Koriagin et al., arXiv 2507.12990): add a domain to a frozen SAE.

A frozen base SAE reconstructs `x`; a residual SAE with no decoder bias is trained on
the error `e = x - x_hat_base` over domain text (`saelab.train_residual`). At inference
the outputs are summed and the latents concatenated: `[base | residual_1 | ...]`.
Several residuals stack: residual r encodes what the base and residuals 1..r-1 left.

`ResidualSAE` is an `SAE` (a composite one: `make_sae` and `train_sae` refuse it), so
`evaluate`, `features` and the widgets take it as they take any SAE; `blocks`,
`block_of` and `latent_label` say which block a latent belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from saelab.io import atomic_folder
from saelab.sae.base import SAE, SAEConfig
from saelab.sae.folder import config_from_dict, read_cfg, write_cfg
from saelab.sae.registry import register

BASE = "base"


@dataclass
class ResidualConfig(SAEConfig):
    """`width` is the total over blocks; `blocks` the block names, base first."""

    blocks: list[str] = field(default_factory=lambda: [BASE])
    block_widths: list[int] = field(default_factory=list)


class Block(NamedTuple):
    """A block of latents: ids `start <= i < stop` of the concatenated code."""

    name: str
    start: int
    stop: int


@register
class ResidualSAE(SAE):
    """A frozen `base` SAE plus residual SAEs (no decoder bias) summed at inference.

    `names` label the residual blocks (e.g. the domain each was trained on); the base
    block is called "base". The base's parameters have `requires_grad=False`.
    """

    kind = "residual"
    config_class = ResidualConfig
    composite = True

    def __init__(self, base: SAE, residuals: list[SAE], names: list[str] | None = None):
        names = (
            list(names)
            if names is not None
            else [f"residual_{i + 1}" for i in range(len(residuals))]
        )
        if len(names) != len(residuals):
            raise ValueError(f"{len(residuals)} residual SAEs but {len(names)} names")
        if BASE in names or len(set(names)) != len(names):
            raise ValueError(f"residual block names must be unique and not {BASE!r}, got {names}")
        if isinstance(base, ResidualSAE):
            raise TypeError(
                "the base of a ResidualSAE is a plain SAE; to stack, pass all residuals in one list"
            )
        for name, res in zip(names, residuals, strict=True):
            if res.cfg.d_in != base.cfg.d_in:
                raise ValueError(
                    f"residual {name!r} takes d_in={res.cfg.d_in}, the base d_in={base.cfg.d_in}"
                )
            if res.cfg.decoder_bias:
                raise ValueError(
                    f"residual {name!r} has a decoder bias; "
                    "residual SAEs have none (decoder_bias=False)"
                )
        widths = [base.cfg.width, *(r.cfg.width for r in residuals)]
        super().__init__(
            ResidualConfig(
                d_in=base.cfg.d_in,
                width=sum(widths),
                hookpoint=base.cfg.hookpoint,
                model=base.cfg.model,
                blocks=[BASE, *names],
                block_widths=widths,
            )
        )
        self.base = base.requires_grad_(False)
        self.residuals = nn.ModuleList(residuals)
        stops = torch.tensor(widths).cumsum(0).tolist()
        self.blocks = [
            Block(name, stop - w, stop)
            for name, w, stop in zip(self.cfg.blocks, widths, stops, strict=True)
        ]

    def init_parameters(self, seed: int, dtype: torch.dtype) -> None:
        """None of its own: the blocks are trained SAEs, passed in."""

    @property
    def target_l0(self) -> float | None:
        """The sum of the blocks' L0 targets (None unless every block has one)."""
        targets = [sae.target_l0 for sae in self.parts]
        return None if None in targets else sum(targets)

    def encoder_multiply_adds(self) -> int:
        return sum(sae.encoder_multiply_adds() for sae in self.parts)

    def latent_label(self, latent: int) -> str:
        """E.g. `"medical latent 12 (#4620)"`: latent 12 of the medical block, id 4620 overall."""
        block, local = self.block_of(int(latent))
        return f"{block} latent {local} (#{int(latent)})"

    @property
    def parts(self) -> list[SAE]:
        """The SAEs in block order: base, then the residuals."""
        return [self.base, *self.residuals]

    def block_of(self, latent: int) -> tuple[str, int]:
        """(block name, id within the block) of a latent of the concatenated code."""
        for block in self.blocks:
            if block.start <= latent < block.stop:
                return block.name, latent - block.start
        raise ValueError(f"latent {latent} is outside 0 .. {self.cfg.width - 1}")

    def encode_blocks(self, x_BD: torch.Tensor) -> dict[str, torch.Tensor]:
        """Codes by block name, `{"base": [B, F_base], name_r: [B, F_r], ...}`.

        Residual r encodes the error left by the base and residuals before it.
        """
        codes, err_BD = {}, x_BD
        for block, sae in zip(self.blocks, self.parts, strict=True):
            f_BF = sae.encode(err_BD)
            codes[block.name] = f_BF
            err_BD = err_BD - sae.decode(f_BF)
        return codes

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Concatenated codes `[B, F_total]`, base block first."""
        return torch.cat(list(self.encode_blocks(x_BD).values()), dim=-1)

    def decode(self, f_BF: torch.Tensor) -> torch.Tensor:
        """Sum of the blocks' decodes (only the base adds a bias), `[B, D]`."""
        parts = f_BF.split(self.cfg.block_widths, dim=-1)
        return sum(sae.decode(f) for sae, f in zip(self.parts, parts, strict=True))

    def check_input(self, x_BD: torch.Tensor) -> None:
        self.base.check_input(x_BD)

    @property
    def W_dec_FD(self) -> torch.Tensor:
        """All decoder rows `[F_total, D]`, base rows first (for logit effects and cosines)."""
        return torch.cat([sae.W_dec_FD for sae in self.parts])

    # --- save / load ---------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """One folder: `cfg.json` plus the base and each residual as SAE folders inside it."""
        with atomic_folder(folder) as tmp:
            write_cfg(tmp, self.cfg)
            for name, sae in zip(self.cfg.blocks, self.parts, strict=True):
                sae.save(tmp / name)
        return Path(folder)

    @classmethod
    def load_folder(cls, folder: str | Path) -> ResidualSAE:
        from saelab.sae.registry import load_sae

        folder = Path(folder)
        cfg = config_from_dict(ResidualConfig, read_cfg(folder))
        parts = [load_sae(folder / name) for name in cfg.blocks]
        sae = cls(parts[0], parts[1:], cfg.blocks[1:])
        if sae.cfg.block_widths != cfg.block_widths:
            raise ValueError(
                f"{folder}: cfg.json says block widths {cfg.block_widths}, "
                f"the saved blocks have {sae.cfg.block_widths}"
            )
        return sae

    def extra_repr(self) -> str:
        return ", ".join(f"{b.name}: {b.stop - b.start}" for b in self.blocks)
