"""torchrun with 2 processes on the CPU (gloo) trains exactly what 1 process trains with the same global batch."""

import json
import subprocess
import sys

import pytest
from conftest import CHILD_ENV, tiny_config, train_args

from growlength.config import save_config
from growlength.train import train


def losses(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["seq_len"], r["rows"], r["loss"]) for r in lines if "loss" in r]


def torchrun(config_path, out, nproc, *extra):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    args = launcher + train_args(config_path, out, *extra)
    env = {**CHILD_ENV, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = tiny_config(corpus, budget_steps=12, evals=2, eval_tokens=1024)
    config_path = tmp / "config.yaml"
    save_config(cfg, config_path)
    single = tmp / "one"
    train(cfg, single, show_progress=False)
    result = torchrun(config_path, tmp / "two", 2)
    return single, tmp / "two", result


def test_two_ranks_match_one_process(runs):
    single, double, result = runs
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = losses(single), losses(double)
    assert [r[:3] for r in one] == [r[:3] for r in two]  # same steps, lengths and global rows
    assert len({r[1] for r in two}) == 3  # the lengths really changed under torchrun
    assert all(abs(a[3] - b[3]) < 1e-4 for a, b in zip(one, two))


def test_the_process_group_shuts_down_cleanly(runs):
    _, _, result = runs
    assert "terminate called" not in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.count("done: step 12") == 1  # rank 0 reports, once


def test_resume_on_another_number_of_ranks(runs, tmp_path):
    """A 1-process run, cut back to its step-6 checkpoint, continues on 2 ranks with the same losses."""
    import shutil

    from growlength.checkpoint import list_checkpoints

    single, _, _ = runs
    moved = tmp_path / "moved"
    shutil.copytree(single, moved)
    for path in list_checkpoints(moved)[1:]:
        shutil.rmtree(path)
    assert [p.name for p in list_checkpoints(moved)] == ["step_00000006"]
    result = torchrun(moved / "config.yaml", moved, 2, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming from" in result.stdout
    one, resumed = losses(single), losses(moved)
    assert [r[:3] for r in one] == [r[:3] for r in resumed]
    assert all(abs(a[3] - b[3]) < 1e-4 for a, b in zip(one, resumed))
