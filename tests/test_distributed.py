"""torchrun with 2 processes on the CPU (gloo) trains exactly what 1 process trains with the same global
batch, under DDP and under FSDP2, with each rank reading its own slice of every step."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CHILD_ENV, tiny_config, train_args

from growlength.checkpoint import list_checkpoints
from growlength.config import save_config

RECORD = str(Path(__file__).parent / "record_batches.py")


def losses(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["seq_len"], r["rows"], r["loss"]) for r in lines if "loss" in r]


def torchrun(config_path, out, nproc, *extra, script=None):
    """`growlength train` under torchrun (or, with script, that script given the same arguments)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    args = train_args(config_path, out, *extra)
    args = [script, *args[2:]] if script else args
    env = {**CHILD_ENV, "OMP_NUM_THREADS": "1"}
    return subprocess.run(launcher + args, capture_output=True, text=True, env=env, timeout=300)


def batches(run_dir, rank):
    with np.load(run_dir / f"batches-rank{rank}.npz") as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def cut_back_to_first_checkpoint(run_dir, into):
    shutil.copytree(run_dir, into)
    for path in list_checkpoints(into)[1:]:
        shutil.rmtree(path)
    assert [p.name for p in list_checkpoints(into)] == ["step_00000006"]


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """One process (batches recorded), DDP on 2 ranks through the CLI, FSDP2 on 2 ranks (recorded)."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = tiny_config(corpus, budget_steps=12, evals=2, eval_tokens=1024)
    config_path = tmp / "config.yaml"
    save_config(cfg, config_path)
    single = tmp / "one"
    one = subprocess.run(
        [sys.executable, RECORD, *train_args(config_path, single)[2:]], env=CHILD_ENV, capture_output=True
    )
    assert one.returncode == 0, one.stderr[-2000:]
    result = torchrun(config_path, tmp / "two", 2)
    fsdp = torchrun(config_path, tmp / "fsdp", 2, "--parallel", "fsdp", script=RECORD)
    assert fsdp.returncode == 0, fsdp.stderr[-2000:]
    return single, tmp / "two", result, tmp / "fsdp"


def test_two_ranks_match_one_process(runs):
    single, double, result, _ = runs
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = losses(single), losses(double)
    assert [r[:3] for r in one] == [r[:3] for r in two]  # same steps, lengths and global rows
    assert len({r[1] for r in two}) == 3  # the lengths really changed under torchrun
    assert all(abs(a[3] - b[3]) < 1e-4 for a, b in zip(one, two, strict=True))


def test_the_process_group_shuts_down_cleanly(runs):
    _, _, result, _ = runs
    assert "terminate called" not in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.count("done: step 12") == 1  # rank 0 reports, once


def test_resume_on_another_number_of_ranks(runs, tmp_path):
    """A 1-process run, cut back to its step-6 checkpoint, continues on 2 ranks with the same losses."""
    single, _, _, _ = runs
    moved = tmp_path / "moved"
    cut_back_to_first_checkpoint(single, moved)
    result = torchrun(moved / "config.yaml", moved, 2, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming from" in result.stdout
    one, resumed = losses(single), losses(moved)
    assert [r[:3] for r in one] == [r[:3] for r in resumed]
    assert all(abs(a[3] - b[3]) < 1e-4 for a, b in zip(one, resumed, strict=True))


def test_ranks_read_disjoint_halves_of_each_step(runs):
    """Rank 0's rows then rank 1's are exactly the rows 1 process reads, step by step: no row twice."""
    single, _, _, fsdp = runs
    one, rank0, rank1 = batches(single, 0), batches(fsdp, 0), batches(fsdp, 1)
    assert len(one) == len(rank0) == len(rank1) == 12
    for whole, a, b in zip(one, rank0, rank1, strict=True):
        assert len(a) == len(b) == len(whole) // 2
        np.testing.assert_array_equal(np.concatenate([a, b]), whole)
        assert not {r.tobytes() for r in a} & {r.tobytes() for r in b}


def test_fsdp_matches_one_process_and_its_checkpoint_resumes_unsharded(runs, tmp_path):
    single, _, _, fsdp = runs
    one, sharded = losses(single), losses(fsdp)
    assert [r[:3] for r in one] == [r[:3] for r in sharded]
    assert all(abs(a[3] - b[3]) < 1e-4 for a, b in zip(one, sharded, strict=True))
    # the FSDP checkpoint holds the full state: one process continues from it with the same losses
    # (changing how the run is launched, --parallel, is allowed on resume)
    moved = tmp_path / "moved"
    cut_back_to_first_checkpoint(fsdp, moved)
    result = subprocess.run(
        [sys.executable, *train_args(moved / "config.yaml", moved, "--resume", "--parallel", "ddp")],
        env=CHILD_ENV,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(abs(a[3] - b[3]) < 1e-4 for a, b in zip(one, losses(moved), strict=True))


def test_accelerate_launch_runs_growlength_train(runs, tmp_path):
    """`accelerate launch` (one process, CPU) runs the unchanged command: the same losses, bit for bit."""
    single, _, _, _ = runs
    accelerate = Path(sys.executable).parent / "accelerate"
    args = [str(accelerate), "launch", "--num_processes", "1", "--cpu", "--mixed_precision", "no"]
    args += ["--dynamo_backend", "no", "--num_cpu_threads_per_process", "2"]
    args += train_args(single / "config.yaml", tmp_path / "acc")  # -m growlength train ...
    result = subprocess.run(args, capture_output=True, text=True, env=CHILD_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done: step 12" in result.stdout
    assert losses(tmp_path / "acc") == losses(single)
