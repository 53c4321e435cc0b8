"""DDP for `train_sae(..., distributed=True)`: the process group, each rank's slice of a
global batch, and the collectives that keep every rank's run state the same.

Launched with `torchrun --nproc_per_node=N script.py`, every rank runs the same loop on
its own `batch_size / N` contiguous rows of each global batch; DDP averages the gradients
(the SAE's loss is a mean over tokens, so the average over ranks is the global batch's
gradient), the fired-latent masks are OR-ed so dead-latent counters agree, and logged
metrics are averaged. Rank 0 alone logs, shows progress and writes checkpoints.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from saelab.models import default_device
from saelab.process_group import all_ranks_succeeded, join_process_group, rank_device
from saelab.sae import SAE, LossOutput, TrainContext

LOGGED_AS_IS = ("step", "tokens", "lr")  # the same on every rank: not averaged


class LossModule(nn.Module):
    """The SAE with `forward = training_loss`, so DDP's gradient hooks see the loss."""

    def __init__(self, sae: SAE):
        super().__init__()
        self.sae = sae

    def forward(self, x_BD: torch.Tensor, ctx: TrainContext) -> LossOutput:
        return self.sae.training_loss(x_BD, ctx)


class Ranks:
    """This process's place in the group and the few collectives the training loop needs.

    `Ranks.single()` is the one-process run: every method is then the identity, so the
    loop reads the same with or without DDP.
    """

    def __init__(self, rank: int, world_size: int, device: torch.device, distributed: bool):
        self.rank, self.world_size, self.device = rank, world_size, device
        self.distributed = distributed

    @classmethod
    def single(cls, device: str | torch.device | None) -> Ranks:
        """The one-process run on `device` (default: CUDA when there is one)."""
        return cls(0, 1, torch.device(device) if device is not None else default_device(), False)

    @classmethod
    def join(cls, device: str | torch.device | None, batch_size: int) -> Ranks:
        """Join the torchrun group; ValueError unless `batch_size` (the global batch)
        splits evenly over the ranks."""
        device = rank_device(device)
        world_size = (
            dist.get_world_size()
            if dist.is_available() and dist.is_initialized()
            else int(os.environ.get("WORLD_SIZE", 1))
        )
        if batch_size % world_size:
            raise ValueError(
                f"batch_size={batch_size} is the global batch and must split evenly over "
                f"the {world_size} ranks (each takes batch_size / {world_size} rows); "
                f"use a multiple of {world_size}"
            )
        join_process_group(device)
        return cls(dist.get_rank(), dist.get_world_size(), device, distributed=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_rows(self, index_B: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of a global batch's indices."""
        per_rank = len(index_B) // self.world_size
        return index_B[self.rank * per_rank : (self.rank + 1) * per_rank]

    def wrap(self, sae: SAE) -> nn.Module:
        """What the loop calls as `model(x_BD, ctx)`: the DDP-wrapped loss under DDP (its
        construction also copies rank 0's weights and buffers to every rank), else
        `training_loss` itself."""
        if not self.distributed:
            return sae.training_loss
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(LossModule(sae), device_ids=device_ids)

    def broadcast_scale(self, scale: float) -> float:
        """Rank 0's input scale on every rank."""
        if not self.distributed:
            return scale
        value = torch.tensor([scale], dtype=torch.float64, device=self.device)
        dist.broadcast(value, src=0)
        return value.item()

    def check_same_step(self, step: int, checkpoint: object) -> None:
        """ValueError on every rank unless all resume from the same step (each rank reads
        the checkpoint folder itself, so it must be one folder they all see)."""
        if not self.distributed:
            return
        steps = torch.tensor([step, -step], dtype=torch.long, device=self.device)
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)
        if steps[0].item() != -steps[1].item():
            raise ValueError(
                f"the ranks start from different steps ({-steps[1].item()} to "
                f"{steps[0].item()}): {checkpoint} must be a folder every rank reads"
            )

    def fired_and_failed(self, fired_F: torch.Tensor, failed: bool) -> tuple[torch.Tensor, bool]:
        """(latents fired on any rank, whether any rank met a non-finite value): one
        all-reduce per step, so dead counters agree and every rank stops together."""
        if not self.distributed:
            return fired_F, failed
        flags = torch.cat(
            [fired_F.to(torch.int32), fired_F.new_tensor([failed], dtype=torch.int32)]
        )
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return flags[:-1].bool(), bool(flags[-1].item())

    def mean_log(self, log: dict) -> dict:
        """The logged metrics averaged over ranks (step, tokens and lr as they are)."""
        if not self.distributed:
            return log
        keys = [key for key in log if key not in LOGGED_AS_IS]
        values = torch.tensor(
            [float(log[key]) for key in keys], dtype=torch.float64, device=self.device
        )
        dist.all_reduce(values)
        means = (values / self.world_size).tolist()
        return {**log, **dict(zip(keys, means, strict=True))}

    def barrier(self, error: BaseException | None = None) -> None:
        """Wait for every rank (after rank 0 writes, so no rank races past a checkpoint), and
        raise `error` there and a RuntimeError on the others if it happened."""
        if self.distributed:
            all_ranks_succeeded(error, self.device, "rank 0 could not write the checkpoint")
        elif error is not None:
            raise error
