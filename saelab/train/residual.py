"""Residual SAEs (Koriagin et al., arXiv 2507.12990): train a second SAE on what a frozen
SAE leaves, with the ordinary `train_sae` loop (docs/methods.md, "Residual SAE")."""

from __future__ import annotations

import torch

from saelab.activations import ActivationStore
from saelab.sae import ResidualSAE, check_fits
from saelab.train.loop import train_sae


class ErrorStore:
    """A view of a store whose rows are the error a frozen SAE leaves, `x - sae(x).x_hat`.

    What `train_residual` trains on: the error is computed per batch from the store's
    activations, so nothing the size of the store is held twice.
    """

    def __init__(self, store: ActivationStore, sae, chunk: int = 4096):
        self.store, self.sae, self.chunk, self.info = store, sae, chunk, store.info

    def __len__(self) -> int:
        return len(self.store)

    @property
    def d_in(self) -> int:
        return self.store.d_in

    @torch.no_grad()
    def errors(self, x_ND: torch.Tensor) -> torch.Tensor:
        param = next(self.sae.parameters())
        out = [
            x - self.sae(x.to(param.device, param.dtype)).x_hat.to(x)
            for x in x_ND.split(self.chunk)
        ]
        return torch.cat(out) if out else x_ND

    def get(self, index_N: torch.Tensor) -> torch.Tensor:
        return self.errors(self.store.get(index_N))

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        return self.errors(self.store.sample(n, seed=seed))


def train_residual(
    base,
    store: ActivationStore | torch.Tensor,
    width: int = 1152,
    kind: str = "topk",
    name: str = "residual",
    **train_options,
):
    """Train a residual SAE on what `base` leaves of `store`; returns
    `ResidualSAE(base, [residual])`.

    `base` stays frozen (its parameters get `requires_grad=False`; they are never in the
    optimiser). The residual is an SAE of `kind` and `width` with no decoder bias, trained
    by `train_sae` on `x - base(x)`; `train_options` go to `train_sae` (k=, target_l0=,
    max_tokens=, lr=, seed=, ...). If `base` is already a `ResidualSAE`, the new residual is
    trained on what all its blocks leave and stacked on top, named `name`.
    """
    if isinstance(store, torch.Tensor):
        store = ActivationStore.from_tensor(store)
    check_fits(
        base.cfg,
        "the base SAE",
        d_in=store.d_in,
        d_in_of="the store's d_in",
        hookpoint=store.info.hookpoint,
    )
    base.requires_grad_(False)
    residual = train_sae(
        ErrorStore(store, base), kind=kind, width=width, decoder_bias=False, **train_options
    )
    if isinstance(base, ResidualSAE):
        return ResidualSAE(base.base, [*base.residuals, residual], [*base.cfg.blocks[1:], name])
    return ResidualSAE(base, [residual], [name])
