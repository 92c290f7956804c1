"""torchrun with 2 processes on the CPU (gloo) trains exactly what 1 process trains with the same global
batch, under DDP and under FSDP2, with each rank reading its own slice of every step."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ONE_THREAD_ENV, tiny_config, train_args

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
    return subprocess.run(launcher + args, capture_output=True, text=True, env=ONE_THREAD_ENV, timeout=900)


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
        [sys.executable, RECORD, *train_args(config_path, single)[2:]], env=ONE_THREAD_ENV, capture_output=True
    )
    assert one.returncode == 0, one.stderr[-2000:]
    result = torchrun(config_path, tmp / "two", 2, "--peak-tflops", "0.001")  # a made-up peak: MFU is logged
    fsdp = torchrun(config_path, tmp / "fsdp", 2, "--parallel", "fsdp", script=RECORD)
    assert fsdp.returncode == 0, fsdp.stderr[-2000:]
    return single, tmp / "two", result, tmp / "fsdp"


def ranks(run_dir, rank):
    return json.loads((run_dir / f"ranks-rank{rank}.json").read_text())


def test_two_ranks_match_one_process(runs):
    single, double, result, _ = runs
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = losses(single), losses(double)
    assert [r[:3] for r in one] == [r[:3] for r in two]  # same steps, lengths and global rows
    assert len({r[1] for r in two}) == 3  # the lengths really changed under torchrun
    assert all(abs(a[3] - b[3]) < 1e-4 for a, b in zip(one, two, strict=True))
    # each rank scored half the val windows: the sums make the 1-process val loss
    one_evals, two_evals = val_records(single), val_records(double)
    assert len(one_evals) == len(two_evals) == 3
    for a, b in zip(one_evals, two_evals, strict=True):
        assert a.keys() == b.keys() and all(abs(a[n] - b[n]) < 1e-4 for n in a)


def val_records(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss_by_len"] for r in lines if "val_loss" in r]


def test_mfu_on_two_ranks_is_per_device(runs):
    """tokens_per_s counts both ranks' tokens; the peak is one device's: MFU divides by the ranks (on 8
    GPUs at 40% it would otherwise read ~320%)."""
    from growlength.checkpoint import model_from_checkpoint
    from growlength.flops import flops_per_token

    _, double, result, _ = runs
    assert result.returncode == 0, result.stderr[-2000:]
    model = model_from_checkpoint(list_checkpoints(double)[-1], _model_config(double), "cpu")
    steps = [json.loads(line) for line in (double / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    assert len(steps) == 12
    for r in steps:
        expected = r["tokens_per_s"] * flops_per_token(model, r["seq_len"]) / (1e9 * 2)
        assert r["mfu"] == pytest.approx(expected, rel=1e-3, abs=1e-4)


def _model_config(run_dir):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(list_checkpoints(run_dir)[-1]))


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
    result = torchrun(moved / "config.yaml", moved, 2, "--resume", script=RECORD)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("resuming from") == 1
    one, resumed = losses(single), losses(moved)
    assert [r[:3] for r in one] == [r[:3] for r in resumed]
    assert all(abs(a[3] - b[3]) < 1e-4 for a, b in zip(one, resumed, strict=True))
    # rank 0 alone verified and read the checkpoint; rank 1 got it by broadcast
    read = ranks(moved, 0)["read"]
    assert {"step_00000006", "model.safetensors", "trainer.safetensors"} <= set(read)  # state, checksums, tensors
    assert ranks(moved, 1)["read"] == []


def test_fsdp_gathers_the_weights_once_a_step_over_its_micro_batches(corpus, tmp_path):
    """Two micro-batches per rank and step: each FSDP unit (2 blocks and the root) is gathered once for the
    step's first forward and kept until its last backward, not once per forward and backward."""
    cfg = tiny_config(corpus, budget_steps=4, evals=1, eval_tokens=1024, micro_batch_tokens=512)
    save_config(cfg, tmp_path / "config.yaml")
    result = torchrun(tmp_path / "config.yaml", tmp_path / "run", 2, "--parallel", "fsdp", script=RECORD)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r[2] for r in losses(tmp_path / "run")] == [32, 32, 16, 8]  # rows at 64, 64, 128, 256
    for rank in (0, 1):
        # (the first step finds the root still gathered from the step-0 evaluation's forward)
        assert ranks(tmp_path / "run", rank)["gathers"] in ([3, 3, 3, 3], [2, 3, 3, 3])


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
        env=ONE_THREAD_ENV,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(abs(a[3] - b[3]) < 1e-4 for a, b in zip(one, losses(moved), strict=True))


def test_accelerate_launch_runs_growlength_train(runs, tmp_path):
    """`accelerate launch` (one process, CPU) runs the unchanged command: the same losses, bit for bit,
    with the one thread the plain run had (another thread count sums in another order)."""
    single, _, _, _ = runs
    accelerate = Path(sys.executable).parent / "accelerate"
    args = [str(accelerate), "launch", "--num_processes", "1", "--cpu", "--mixed_precision", "no"]
    args += ["--dynamo_backend", "no", "--num_cpu_threads_per_process", "1"]
    args += train_args(single / "config.yaml", tmp_path / "acc")  # -m growlength train ...
    result = subprocess.run(args, capture_output=True, text=True, env=ONE_THREAD_ENV, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done: step 12" in result.stdout
    assert losses(tmp_path / "acc") == losses(single)


def test_an_encoder_on_two_ranks_masks_and_trains_as_one_process(corpus, tmp_path):
    """--objective mlm: each row's mask is drawn at its index in the step, not by rank or micro-batch,
    and the loss is the mean over the step's masked tokens on all ranks, so 2 ranks train exactly what
    1 process trains (and a resume may change the number of ranks)."""
    cfg = tiny_config(
        corpus,
        model="modernbert-tiny",
        objective="mlm",
        budget_steps=6,
        evals=1,
        eval_tokens=1024,
        micro_batch_tokens=512,
    )  # 2 micro-batches a rank, 4 in the one process: every row's index in the step counts
    save_config(cfg, tmp_path / "config.yaml")
    one = subprocess.run(
        [sys.executable, *train_args(tmp_path / "config.yaml", tmp_path / "one")],
        env=ONE_THREAD_ENV,
        capture_output=True,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(tmp_path / "config.yaml", tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-2000:]
    single, double = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [r[:3] for r in single] == [r[:3] for r in double] and len({r[1] for r in single}) == 3
    assert all(abs(a[3] - b[3]) < 1e-4 for a, b in zip(single, double, strict=True))


def test_adaptive_changes_length_on_the_same_step_on_every_rank(corpus, tmp_path):
    """--schedule adaptive decides from timed rates, which differ by rank: rank 0's decision is broadcast,
    so both ranks train every step at the same length, and the run reaches the target."""
    cfg = tiny_config(
        corpus, schedule="adaptive", start_len=32, budget_steps=40, evals=1, eval_tokens=1024, adaptive_floor=0.2
    )
    save_config(cfg, tmp_path / "config.yaml")
    result = torchrun(tmp_path / "config.yaml", tmp_path / "run", 2, script=RECORD)
    assert result.returncode == 0, result.stderr[-2000:]
    rank0, rank1 = batches(tmp_path / "run", 0), batches(tmp_path / "run", 1)
    assert len(rank0) == len(rank1) == 40
    assert [b.shape for b in rank0] == [b.shape for b in rank1]
    assert rank0[0].shape[1] == 32 and rank0[-1].shape[1] == 256
