"""What only a GPU can check (`pytest -m gpu`; skipped without CUDA): scripts/device-bench.sh runs these
first on a lent device. On the CPU the same code paths are tested elsewhere (tests/test_device.py with
torch.cuda mocked); here: a bf16 run logging peak memory and MFU, the run's GPU, fused AdamW and the
allocator's options, the flash kernel reached eager and compiled, compile's graphs per length, and the
process group whose small collectives send CPU tensors beside nccl's CUDA ones."""

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


def test_setup_on_cuda_picks_the_gpu_fused_adamw_and_the_allocator(request, tmp_path):
    from growlength.train import setup

    data = os.environ.get("GROWLENGTH_TEST_DATA") or request.getfixturevalue("corpus")
    run = setup(tiny_config(data, device="cuda"), tmp_path / "run", resume=False)
    assert run.device == torch.device("cuda", torch.cuda.current_device())
    assert all(p.device == run.device for p in run.model.parameters())
    assert run.optimizer.defaults["fused"] is True
    assert "expandable_segments" in (os.environ.get("PYTORCH_ALLOC_CONF") or os.environ["PYTORCH_CUDA_ALLOC_CONF"])
    assert torch.get_float32_matmul_precision() == "highest"  # no TF32: see the rotary test below


def test_rotary_angles_stay_exact_at_long_positions(request, tmp_path):
    """The fp32 that bf16 autocast leaves stays fp32: transformers 5.17 computes RoPE's angles as a
    matmul, which TF32 would round to 10 bits of mantissa (position 8,191 turned into 8,192)."""
    from growlength.train import setup

    data = os.environ.get("GROWLENGTH_TEST_DATA") or request.getfixturevalue("corpus")
    run = setup(tiny_config(data, device="cuda"), tmp_path / "run", resume=False)
    rotary = next(m for m in run.model.modules() if type(m).__name__.endswith("RotaryEmbedding"))
    positions = torch.arange(8192, device=run.device)[None]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        cos, _ = rotary(torch.zeros(1, device=run.device), positions)
    angles = positions[0].cpu().double()[:, None] * rotary.inv_freq.cpu().double()
    expected = torch.cos(torch.cat([angles, angles], dim=-1))  # transformers' layout: the angles twice
    assert (cos[0].cpu().double() - expected).abs().max().item() < 1e-3


@pytest.mark.parametrize("compiled", [False, True])
def test_attention_runs_the_flash_kernel_eager_and_compiled(request, tmp_path, compiled):
    """With no materialised mask SDPA takes its causal flash kernel (a model compiled whole would hand it
    a boolean mask, and the math or memory-efficient kernel would run instead)."""
    import time

    from growlength.train import setup, train_step

    data = os.environ.get("GROWLENGTH_TEST_DATA") or request.getfixturevalue("corpus")
    run = setup(tiny_config(data, device="cuda", compile=compiled), tmp_path / "run", resume=False)
    train_step(run, run.shape_by_len[64], time.perf_counter())  # compiles (when asked) outside the profile
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        train_step(run, run.shape_by_len[64], time.perf_counter())
        torch.cuda.synchronize()
    names = {event.key.lower() for event in prof.key_averages()}
    # flash, or on Hopper cuDNN's fused attention, which SDPA may rank first: both the causal fast path
    assert any("flash" in name or ("cudnn" in name and "sdpa" in name) for name in names), sorted(names)


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
