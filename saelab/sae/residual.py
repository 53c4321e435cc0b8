"""Residual SAEs (Koriagin et al., arXiv 2507.12990): add a domain to a frozen SAE.

A frozen base SAE reconstructs `x`; a residual SAE with no decoder bias is trained on
the error `e = x - x_hat_base` over domain text (`saelab.train_residual`). At inference
the outputs are summed and the latents concatenated: `[base | residual_1 | ...]`.
Several residuals stack: residual r encodes what the base and residuals 1..r-1 left.

`ResidualSAE` has the SAE interface (`encode`, `decode`, `forward`, `cfg.width`,
`W_dec_FD`, `save`), so `evaluate`, `features` and the widgets take it as they take any
SAE; `blocks` and `block_of` say which block a latent belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from saelab.sae import register
from saelab.sae.base import (
    SAE,
    SAEConfig,
    SAEOutput,
    atomic_folder,
    config_from_dict,
    read_cfg,
    write_cfg,
)

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
class ResidualSAE(nn.Module):
    """A frozen `base` SAE plus residual SAEs (no decoder bias) summed at inference.

    `names` label the residual blocks (e.g. the domain each was trained on); the base
    block is called "base". The base's parameters have `requires_grad=False`.
    """

    kind = "residual"
    config_class = ResidualConfig

    def __init__(self, base: SAE, residuals: list[SAE], names: list[str] | None = None):
        super().__init__()
        names = list(names) if names is not None else [f"residual_{i + 1}" for i in range(len(residuals))]
        if len(names) != len(residuals):
            raise ValueError(f"{len(residuals)} residual SAEs but {len(names)} names")
        if BASE in names or len(set(names)) != len(names):
            raise ValueError(f"residual block names must be unique and not {BASE!r}, got {names}")
        if isinstance(base, ResidualSAE):
            raise TypeError("the base of a ResidualSAE is a plain SAE; to stack, pass all residuals in one list")
        for name, res in zip(names, residuals):
            if res.cfg.d_in != base.cfg.d_in:
                raise ValueError(f"residual {name!r} takes d_in={res.cfg.d_in}, the base d_in={base.cfg.d_in}")
            if res.cfg.decoder_bias:
                raise ValueError(f"residual {name!r} has a decoder bias; residual SAEs have none (decoder_bias=False)")
        self.base = base.requires_grad_(False)
        self.residuals = nn.ModuleList(residuals)
        widths = [base.cfg.width, *(r.cfg.width for r in residuals)]
        self.cfg = ResidualConfig(d_in=base.cfg.d_in, width=sum(widths), kind=self.kind, hookpoint=base.cfg.hookpoint,
                                  model=base.cfg.model, decoder_bias=True, blocks=[BASE, *names], block_widths=widths)
        stops = torch.tensor(widths).cumsum(0).tolist()
        self.blocks = [Block(name, stop - w, stop) for name, w, stop in zip(self.cfg.blocks, widths, stops)]

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
        for block, sae in zip(self.blocks, self.parts):
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
        return sum(sae.decode(f) for sae, f in zip(self.parts, parts))

    def forward(self, x_BD: torch.Tensor) -> SAEOutput:
        self.check_input(x_BD)
        f_BF = self.encode(x_BD)
        return SAEOutput(self.decode(f_BF), f_BF)

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
            for name, sae in zip(self.cfg.blocks, self.parts):
                sae.save(tmp / name)
        return Path(folder)

    @classmethod
    def load_folder(cls, folder: str | Path) -> ResidualSAE:
        from saelab.sae import load_sae

        folder = Path(folder)
        cfg = config_from_dict(ResidualConfig, read_cfg(folder))
        parts = [load_sae(folder / name) for name in cfg.blocks]
        sae = cls(parts[0], parts[1:], cfg.blocks[1:])
        if sae.cfg.block_widths != cfg.block_widths:
            raise ValueError(f"{folder}: cfg.json says block widths {cfg.block_widths}, "
                             f"the saved blocks have {sae.cfg.block_widths}")
        return sae

    def extra_repr(self) -> str:
        return ", ".join(f"{b.name}: {b.stop - b.start}" for b in self.blocks)
