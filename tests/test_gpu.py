"""What only a GPU can check (`pytest -m gpu`; skipped without CUDA): scripts/device-bench.sh runs these
first on a lent device. On the CPU the same code paths are tested elsewhere; here: bf16 autocast,
fused AdamW, the allocator's options, peak memory and MFU in the metrics, and the process group whose
small collectives send CPU tensors beside nccl's CUDA ones."""

import json
import os
import socket

import pytest
import torch
from conftest import tiny_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_a_bf16_run_on_cuda_logs_memory_and_mfu(request, tmp_path):
    from growlength.train import train

    # On a device machine the corpus package is not installed: the script carries a prepared folder.
    data = os.environ.get("GROWLENGTH_TEST_DATA") or request.getfixturevalue("corpus")
    cfg = tiny_config(data, device="cuda", budget_steps=6, evals=1)
    train(cfg, tmp_path / "run", show_progress=False)
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    assert len(steps) == 6 and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    assert all(r["peak_mem_mb"] > 0 for r in steps)
    name = torch.cuda.get_device_name()
    from growlength.flops import peak_flops

    if peak_flops(name) is not None:
        assert all(0 < r["mfu"] < 1 for r in steps), name


def test_a_process_group_on_cuda_runs_every_collective(tmp_path):
    """One process, the backend string dist.init uses on CUDA: the CPU-tensor helpers (gloo) and a DDP
    step on CUDA tensors (nccl) both work."""
    import torch.distributed as torch_dist

    from growlength import dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch_dist.init_process_group(
        "cpu:gloo,cuda:nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
    )
    try:
        assert dist.active()
        assert dist.broadcast_float(1.25) == 1.25 and dist.mean_over_ranks(3.0) == 3.0
        dist.barrier()
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 8).cuda())
        model(torch.randn(4, 8, device="cuda")).sum().backward()
        assert model.module.weight.grad is not None
    finally:
        torch_dist.destroy_process_group()


def test_compile_on_cuda_builds_one_graph_per_stage_length(request, tmp_path):
    from growlength.train import train

    data = os.environ.get("GROWLENGTH_TEST_DATA") or request.getfixturevalue("corpus")
    cfg = tiny_config(data, device="cuda", budget_steps=9, evals=1, compile=True)
    train(cfg, tmp_path / "run", show_progress=False)
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    assert [r["seq_len"] for r in steps] == [64] * 3 + [128] * 3 + [256] * 3
    assert [r["compiles"] for r in steps] == [1] * 3 + [2] * 3 + [3] * 3
