"""The one place that touches torch.distributed. Without torchrun every helper is a no-op.

Under `torchrun`, every decision that depends on something measured (elapsed time) is taken on rank 0
and broadcast, so all ranks switch length on the same step. The model is replicated (DDP) or sharded
(FSDP2's `fully_shard`, one unit per transformer block); checkpoints hold the full, unsharded state
keyed by parameter name either way, so a run can resume on another number of ranks or another wrapper.
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
    """Join the process group torchrun describes in the environment: gloo on CPU; on CUDA, nccl for
    CUDA tensors and gloo for the CPU ones (the small collectives here send CPU tensors, which nccl
    alone refuses: "No backend type associated with device type cpu")."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo")
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


def wrap(model, world: World, device, parallel: str = "ddp"):
    """DDP (or FSDP2) over the model when there is more than one rank."""
    if world.size == 1:
        return model
    if parallel == "fsdp":
        return _fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _fully_shard(model):
    """FSDP2: each transformer block (the classes the model lists in `_no_split_modules`) is one unit
    whose parameters are gathered for its forward and backward, then the root for the rest."""
    from torch.distributed.fsdp import fully_shard

    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    return model


def is_sharded(model) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


def unwrap(model):
    """The model inside a DDP wrapper (or the model itself; FSDP2 shards in place)."""
    return getattr(model, "module", model)


def no_sync(model, last_micro_step: bool):
    """Skip the gradient all-reduce (or reduce-scatter) on every micro-batch but the last of a step."""
    if is_sharded(model):
        model.set_requires_gradient_sync(last_micro_step)
        return nullcontext()
    if last_micro_step or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()


def full_state(model, optimizer) -> tuple[dict, dict]:
    """The full model and optimizer state, keyed by parameter name whatever the wrapper. Every rank must
    call it (FSDP gathers the shards); under FSDP only rank 0 gets the tensors, on the CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=is_sharded(model))
    return get_state_dict(model, optimizer, options=options)


def load_full_state(model, optimizer, model_state: dict, optim_state: dict) -> None:
    """Load a full state (as full_state returns it) into a plain, DDP or FSDP model on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state, options=options)


def shutdown() -> None:
    # A barrier first: destroying the group while a peer is still in a collective aborts at exit.
    if active():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
