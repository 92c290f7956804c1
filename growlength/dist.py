"""The one place that touches torch.distributed. Without torchrun every helper is a no-op.

Under `torchrun`, every decision that depends on something measured (elapsed time) is taken on rank 0
and broadcast, so all ranks switch length on the same step. The model is replicated (DDP) or sharded
(FSDP2's `fully_shard`, one unit per transformer block); checkpoints hold the full, unsharded state
keyed by parameter name either way, so a run can resume on another number of ranks or another wrapper.
"""

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from growlength.models import transformer_blocks


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: torch.device) -> World:
    """Join the process group torchrun describes in the environment: gloo on CPU; on CUDA, nccl for
    CUDA tensors and gloo for the CPU ones (the small collectives here send CPU tensors, which nccl
    alone refuses: "No backend type associated with device type cpu"). On CUDA the group is bound to
    this rank's GPU (`device_id`, which preflight.device_for made current): nccl then builds its
    communicator there at once instead of guessing a device at the first collective."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not torch_dist.is_initialized():
        on_cuda = device.type == "cuda"
        torch_dist.init_process_group(
            backend="cpu:gloo,cuda:nccl" if on_cuda else "gloo", device_id=device if on_cuda else None
        )
    return World(rank=torch_dist.get_rank(), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def is_first_process() -> bool:
    """Global rank 0 as torchrun numbers it (RANK), known before the process group exists."""
    return os.environ.get("RANK", "0") == "0"


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
    return sum_over_ranks(value) / rank_and_size()[1]


def sum_over_ranks(value: float) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch_dist.all_reduce(t)
    return float(t.item())


def rank_and_size() -> tuple[int, int]:
    """(this rank, the number of ranks) of the group; (0, 1) without one."""
    return (torch_dist.get_rank(), torch_dist.get_world_size()) if active() else (0, 1)


def barrier() -> None:
    if active():
        torch_dist.barrier()


def wrap(model, world: World, device: torch.device, parallel: str = "ddp"):
    """The model, built on the CPU, on this rank's device: as it is on one process, replicated (DDP) or
    sharded (FSDP2) when there is more than one rank."""
    if world.size == 1:
        return model.to(device)
    if parallel == "fsdp":
        return _fully_shard(model, device, world.size)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model.to(device), device_ids=[device.index] if device.type == "cuda" else None)


def _fully_shard(model, device: torch.device, world_size: int):
    """FSDP2, as torchtitan applies it: each transformer block one unit whose parameters are gathered for
    its forward and backward, then the root for the rest. Sharded from the CPU, block by block:
    `fully_shard` moves a unit's parameters to the mesh's device as it shards them, so the full model is
    never on one GPU (the host holds one fp32 copy per rank meanwhile). On CUDA the gathered parameters
    are bf16 (half the all-gather bytes; the shards the optimizer steps stay fp32) and gradients are
    reduced in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    bf16 = torch.bfloat16 if device.type == "cuda" else None
    policy = MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=torch.float32)
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def is_sharded(model) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


def unwrap(model):
    """The model inside a DDP wrapper (or the model itself; FSDP2 shards in place)."""
    return getattr(model, "module", model)


def no_sync(model, micro: int, accum: int):
    """Skip the gradient all-reduce (or reduce-scatter) on every micro-batch but the last of a step.
    Under FSDP with several micro-batches, the parameters gathered for the first forward also stay
    gathered until the last backward (FSDP2's documented way to accumulate: one all-gather a step, not
    two per micro-batch; the gathered bf16 weights are held beside the unreduced gradients meanwhile).
    With one micro-batch, FSDP's own resharding after forward and backward."""
    last = micro == accum - 1
    if is_sharded(model):
        model.set_requires_gradient_sync(last)
        model.set_reshard_after_forward(accum == 1)  # (FSDP's own setting when there is one micro-batch:
        model.set_reshard_after_forward(False, recurse=False)  # the blocks reshard, the root stays gathered)
        model.set_reshard_after_backward(last)
        return nullcontext()
    if last or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()


def full_state(model, optimizer) -> tuple[dict, dict]:
    """The full model and optimizer state, keyed by parameter name whatever the wrapper. Every rank must
    call it (FSDP gathers the shards); under FSDP only rank 0 gets the tensors, on the CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=is_sharded(model))
    return get_state_dict(model, optimizer, options=options)


def load_full_state(model, optimizer, model_state: dict, optim_state: dict) -> None:
    """Load a full state (as full_state returns it) into a plain, DDP or FSDP model. Under torchrun only
    rank 0 reads the checkpoint: the others pass empty states and receive rank 0's tensors, each rank
    keeping its own shard (one host copy of the checkpoint per machine-rank 0, not one per rank). Model
    and optimizer are set apart: `set_state_dict` with an empty model state on a receiving rank would
    skip the model's broadcast that rank 0 enters, and hang."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=active())
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)


def broadcast_json(value=None):
    """Rank 0's JSON-able value on every rank (the others pass nothing), sent as UTF-8 bytes: no pickle."""
    if not active():
        return value
    data = json.dumps(value).encode() if torch_dist.get_rank() == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.int64)
    torch_dist.broadcast(size, src=0)
    buffer = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(int(size), dtype=torch.uint8)
    )
    torch_dist.broadcast(buffer, src=0)
    return json.loads(buffer.numpy().tobytes().decode())


def broadcast_tensor(tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Rank 0's CPU tensor on every rank; the others pass None and a tensor of the same shape and dtype."""
    if not active():
        return tensor
    out = tensor.clone() if torch_dist.get_rank() == 0 else torch.empty_like(like)
    torch_dist.broadcast(out, src=0)
    return out


def shutdown() -> None:
    # A barrier first: destroying the group while a peer is still in a collective aborts at exit.
    if active():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
