"""The one place that touches torch.distributed. Without torchrun every helper is a no-op.

Under `torchrun`, every decision that depends on something measured (elapsed time) is taken on rank 0
and broadcast, so all ranks switch length on the same step.
"""

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device_type: str) -> World:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return World(rank=torch_dist.get_rank(), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def active() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def broadcast_float(value: float) -> float:
    """Rank 0's value on every rank."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch_dist.broadcast(t, src=0)
    return float(t.item())


def mean_over_ranks(value: float) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch_dist.all_reduce(t)
    return float(t.item()) / torch_dist.get_world_size()


def barrier() -> None:
    if active():
        torch_dist.barrier()


def wrap(model, world: World, device):
    """DDP over the model when there is more than one rank."""
    if world.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model):
    """The model inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def no_sync(model, last_micro_step: bool):
    """Skip the gradient all-reduce on every micro-batch but the last of a step."""
    if last_micro_step or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()


def shutdown() -> None:
    # A barrier first: destroying the group while a peer is still in a collective aborts at exit.
    if active():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
