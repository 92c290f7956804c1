"""The GPU path's choices, checked on the CPU: `torch.cuda` and `init_process_group` are replaced by
recorders that stand in for 8 GPUs and torchrun's nccl group (what each test mocks is said in it)."""

import pytest
import torch
import torch.distributed as torch_dist

from growlength import dist
from growlength.errors import GrowLengthError
from growlength.preflight import device_for


@pytest.fixture
def eight_gpus(monkeypatch):
    """torch.cuda as a machine with 8 GPUs shows it, recording each set_device; nothing touches a GPU."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "")  # leave this process's allocator settings alone
    return chosen


@pytest.mark.parametrize("local_rank", ["0", "3", "7"])
def test_each_rank_takes_the_gpu_of_its_local_rank(eight_gpus, monkeypatch, local_rank):
    """Without set_device every rank's model lands on cuda:0 and nccl's first collective fails
    ("Duplicate GPU detected"): the run's device is cuda:LOCAL_RANK, made current before any CUDA work."""
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    for name in ("cuda", "auto"):
        device = device_for(name)
        assert device == torch.device("cuda", int(local_rank)) and device.index == int(local_rank)
    assert eight_gpus == [int(local_rank)] * 2


def test_more_processes_than_gpus_is_refused(eight_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "8")
    with pytest.raises(GrowLengthError, match="LOCAL_RANK 8 but torch sees 8 GPUs"):
        device_for("cuda")
    assert eight_gpus == []


@pytest.fixture
def group(monkeypatch):
    """init_process_group as a recorder: rank 3 of 8 in a group that was never really started."""
    calls = []
    monkeypatch.setattr(torch_dist, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(torch_dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(torch_dist, "get_rank", lambda: 3)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "3")
    return calls


def test_the_process_group_is_bound_to_the_ranks_gpu(group):
    world = dist.init(torch.device("cuda", 3))
    assert group == [{"backend": "cpu:gloo,cuda:nccl", "device_id": torch.device("cuda", 3)}]
    assert (world.rank, world.size, world.local_rank) == (3, 8, 3)


def test_on_the_cpu_the_group_is_gloo_with_no_device(group):
    dist.init(torch.device("cpu"))
    assert group == [{"backend": "gloo", "device_id": None}]


def test_ddp_on_cuda_names_the_ranks_gpu(monkeypatch):
    """DDP's device_ids is the rank's GPU (DDP itself stands in for a recorder: no module is moved)."""
    seen = {}

    class Recorder:
        def __init__(self, module, device_ids):
            seen["device_ids"] = device_ids

    class Model(torch.nn.Linear):
        def to(self, device):
            seen["to"] = device
            return self

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", Recorder)
    dist.wrap(Model(2, 2), dist.World(rank=5, size=8, local_rank=5), torch.device("cuda", 5), "ddp")
    assert seen == {"to": torch.device("cuda", 5), "device_ids": [5]}
