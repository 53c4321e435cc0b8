"""torchrun's process group, shared by distributed training (saelab/train/distributed.py)
and the sharded harvest (saelab/sharded.py): joining it, which rank writes, and a barrier
that tells every rank whether another failed instead of leaving it waiting forever."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_main_process() -> bool:
    """True in a one-process run and on rank 0: the process that saves, prints and logs.
    Before the group is joined, torchrun's RANK says which process that is."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def rank_device(device: str | torch.device | None) -> torch.device:
    """This rank's device: `cuda:LOCAL_RANK` when CUDA is asked for (or is there and nothing
    was asked for) without an index, else `device` (CPU by default without CUDA)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def join_process_group(device: torch.device) -> None:
    """Join torchrun's process group (NCCL for a CUDA device, gloo otherwise), unless the
    caller already initialised one."""
    if not dist.is_available():
        raise RuntimeError("distributed=True needs a PyTorch build with torch.distributed")
    if not dist.is_initialized():
        missing = [name for name in TORCHRUN_ENV if name not in os.environ]
        if missing:
            raise RuntimeError(
                f"distributed=True needs torchrun's environment ({', '.join(missing)} not "
                "set): launch with `torchrun --nproc_per_node=N your_script.py`, or "
                "initialise torch.distributed yourself first"
            )
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    elif device.type != "cuda" and dist.get_backend() == "nccl":
        raise ValueError(
            f"the process group uses NCCL, which cannot reduce {device.type} tensors: "
            "train on device='cuda' or initialise the group with backend='gloo'"
        )


def all_ranks_succeeded(error: BaseException | None, device, failure: str) -> None:
    """A barrier that tells every rank whether any failed: `error` is raised where it
    happened, RuntimeError(`failure`) on the others, instead of them waiting forever in the
    next collective."""
    failed = torch.tensor([error is not None], dtype=torch.int32, device=device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if error is not None:
        raise error
    if failed.item():
        raise RuntimeError(f"{failure} (see its error)")


def leave_process_group() -> None:
    """Under torchrun: every rank waits for rank 0's writes, then all leave the group together
    (a rank that exits while another is still in the group can abort that one's gloo thread)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
