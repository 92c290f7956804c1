"""One writer per folder, and a clean stop when a write fails: train, prepare and bench.

The lock tests start real processes together. The full-disk tests make one write fail with
OSError(ENOSPC) at a write site (standing in for a file system that fills up), check the one line and
what is left on disk, then let the space return and resume."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import CHILD_ENV, tiny_config, train_args
from torch.utils.tensorboard import SummaryWriter

import growlength.bench
import growlength.checkpoint
import growlength.shards
import growlength.trackers
from growlength.checkpoint import list_checkpoints, verify
from growlength.cli import main
from growlength.config import save_config
from growlength.prepare import prepare
from growlength.train import train


def launch(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "growlength", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
        start_new_session=True,
    )


def steps_of(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["seq_len"], r["loss"]) for r in lines if "loss" in r]


def steps_so_far(run_dir) -> int:
    """Steps a live run has logged (its last line may be half written as we read)."""
    text = (run_dir / "metrics.jsonl").read_text() if (run_dir / "metrics.jsonl").is_file() else ""
    return text[: text.rfind("\n") + 1].count('"loss": ')  # whole lines only


def the_refused(folder, *args) -> str:
    """Two processes of one command on one folder: the first, once it holds the folder's lock, is
    stopped (SIGSTOP) while the second starts, so the second always meets a live holder however the two
    are scheduled; the second is refused (exit 2), then the first goes on and runs to the end (exit 0).
    The refused one's stderr."""
    first = launch(*args)
    deadline = time.time() + 240
    lock = folder / ".lock"
    while not (lock.is_file() and f"PID {first.pid}" in lock.read_text()):  # it took the lock
        assert first.poll() is None and time.time() < deadline, first.stderr.read()[-1500:]
        time.sleep(0.01)
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        second = launch(*args)
        _, err = second.communicate(timeout=900)  # hang guards, not speed bounds
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    _, first_err = first.communicate(timeout=900)
    assert (first.returncode, second.returncode) == (0, 2), (first_err[-1500:], err[-1500:])
    return err.strip()


def test_two_trainings_started_together_on_one_folder(corpus, tmp_path):
    save_config(tiny_config(corpus, budget_steps=40, evals=2, eval_tokens=1024), tmp_path / "config.yaml")
    out = tmp_path / "run"
    refused = the_refused(out, *train_args(tmp_path / "config.yaml", out)[2:])
    assert refused.count("\n") == 0 and refused.startswith(f"error: {out} is in use by `growlength train` on")
    assert f"on {socket.gethostname()}, PID " in refused
    assert [s for s, _, _ in steps_of(out)] == list(range(1, 41))  # each step once, in order


def test_a_resume_against_a_live_run_is_refused_and_a_killed_run_leaves_no_lock(corpus, tmp_path):
    # far more steps than it will run: the test kills it, and a fast machine must not finish it first
    cfg = tiny_config(corpus, budget_steps=100_000, evals=2, eval_every_tokens=10 * 2048, eval_tokens=1024)
    save_config(cfg, tmp_path / "config.yaml")
    out = tmp_path / "run"
    live = launch(*train_args(tmp_path / "config.yaml", out)[2:])
    deadline = time.time() + 240
    while not list_checkpoints(out):  # running, with a checkpoint to resume from
        assert live.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.2)
    second = launch("train", "--out", out, "--resume", "--quiet")
    _, err = second.communicate(timeout=600)
    assert second.returncode == 2 and f"{out} is in use by `growlength train`" in err and f"PID {live.pid}" in err
    assert live.poll() is None  # the live run goes on
    os.killpg(live.pid, signal.SIGKILL)  # a crash: the kernel drops its lock with the process
    live.wait()
    trained = steps_so_far(out)
    resumed = launch("train", "--out", out, "--resume", "--quiet")
    deadline = time.time() + 240
    while steps_so_far(out) <= trained + 2:  # it took the folder and trains on
        assert resumed.poll() is None, resumed.stderr.read()
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(resumed.pid, signal.SIGKILL)
    resumed.wait()


def test_two_prepares_of_one_folder(tmp_path):
    out = tmp_path / "data"
    refused = the_refused(out, "prepare", "--out", out, "--vocab-size", 300, "--workers", 1)
    assert refused.startswith(f"error: {out} is in use by `growlength prepare` on")
    assert json.loads((out / "meta.json").read_text())["vocab_size"] == 300


BENCH = [
    "--model",
    "tiny",
    "--start-len",
    64,
    "--target-len",
    256,
    "--tokens-per-step",
    2048,
    "--block-tokens",
    1024,
]
BENCH += ["--eval-tokens", 1024, "--budget-steps", 4, "--evals", 1, "--repeats", 1, "--short-len", 64]
BENCH += ["--runs", "fixed-target,growlength", "--extrapolate", "64,256", "--log-to", "none", "--quiet"]


def test_two_benches_of_one_folder(corpus, tmp_path):
    out = tmp_path / "bench"
    refused = the_refused(out, "bench", "--out", out, "--data", corpus, *BENCH)
    assert refused.startswith(f"error: {out} is in use by `growlength bench` on")
    assert (out / "bench.json").is_file()


def failing(real, n: int):
    """`real`, but its n-th call (from 1) fails as on a full disk."""
    calls = []

    def write(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    return write


@pytest.mark.parametrize(
    ("site", "call", "what", "last"),
    [
        ((growlength.checkpoint, "save_file"), 3, "checkpoint step 16", "step_00000008"),  # step 16's weights
        ((growlength.checkpoint, "fsync"), 2, "checkpoint step 8", "none yet"),  # inside step 8's folder
        ((growlength.trackers, "append_line"), 12, "metrics.jsonl", "step_00000008"),  # step 11's record
        ((SummaryWriter, "add_scalar"), 60, "TensorBoard events", "step_00000008"),
    ],
    ids=["checkpoint weights", "checkpoint fsync", "metrics", "tensorboard"],
)
def test_a_full_disk_stops_training_in_one_line_and_resume_gives_the_uninterrupted_run(
    site, call, what, last, corpus, tmp_path, monkeypatch, capsys
):
    cfg = tiny_config(corpus, budget_steps=24, evals=3, eval_tokens=1024)
    whole = tmp_path / "whole"
    train(cfg, whole, show_progress=False)
    save_config(cfg, tmp_path / "config.yaml")
    out = tmp_path / "run"
    module, name = site
    real = getattr(module, name)
    monkeypatch.setattr(module, name, failing(real, call))
    assert main(train_args(tmp_path / "config.yaml", out)[2:]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and f"could not write {what}" in error, error
    assert "No space left on device" in error and "the last good checkpoint is " in error and "--resume" in error
    assert (last == "none yet") == (not list_checkpoints(out)) and last in error
    assert not list((out / "checkpoints").glob(".tmp-*"))  # no partial checkpoint is left
    assert all(verify(checkpoint) is None for checkpoint in list_checkpoints(out))  # what was written is whole
    monkeypatch.setattr(module, name, real)  # the space returns
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    assert steps_of(out) == steps_of(whole)


def test_a_full_disk_while_preparing_stops_in_one_line_and_the_same_command_finishes(
    tmp_path, monkeypatch, capsys
):
    from growlength import encode
    from growlength.shards import ShardWriter

    monkeypatch.setattr(encode, "BATCH_CHARS", 200_000)  # many batches, each committed with its state
    whole = prepare(["shakespeare"], tmp_path / "whole", vocab_size=300, workers=1, shard_tokens=100_000)
    args = ["prepare", "--out", str(tmp_path / "cut"), "--vocab-size", "300", "--workers", "1"]
    args += ["--shard-tokens", "100000"]
    real = ShardWriter.write_shard
    monkeypatch.setattr(ShardWriter, "write_shard", failing(real, 3))
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # (the progress lines before it, off a terminal)
    error = lines[-1]
    assert [line for line in lines if line.startswith("error")] == [error]
    assert "could not write token shards" in error and "No space left" in error
    assert "run the same command again" in error and not (tmp_path / "cut" / "meta.json").exists()
    monkeypatch.setattr(ShardWriter, "write_shard", real)
    assert main(args) == 0
    meta = json.loads((tmp_path / "cut" / "meta.json").read_text())
    assert meta["shards"] == whole["shards"] and meta["train_tokens"] == whole["train_tokens"]
    assert not list((tmp_path / "cut").glob(".*.tmp"))


def test_a_full_disk_while_writing_the_bench_report_keeps_the_runs(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench"
    args = ["bench", "--out", str(out), "--data", str(corpus), *map(str, BENCH)]
    real = growlength.bench.archive_runs
    monkeypatch.setattr(growlength.bench, "archive_runs", failing(real, 1))
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert (
        error.count("\n") == 0 and "could not write the bench's report" in error and "run the same bench" in error
    )
    assert not (out / "runs.tar.gz").exists() and not list(out.glob(".*.tmp"))
    finished = sorted(p.parent.parent.name for p in out.glob("*/seed*/final-eval.json"))
    assert finished == ["fixed-target", "growlength"]  # both runs were kept
    trained = {name: steps_of(out / name / "seed0") for name in finished}
    monkeypatch.setattr(growlength.bench, "archive_runs", real)
    assert main(args) == 0  # continues: nothing is trained again
    assert (out / "runs.tar.gz").is_file() and (out / "bench.json").is_file()
    assert {name: steps_of(out / name / "seed0") for name in finished} == trained


def test_a_waiter_whose_lock_file_was_removed_locks_the_one_there_now(tmp_path):
    """The corpus cache's waiters block on the lock; if its holder fails before writing anything and
    removes its files, a waiter must not hold a lock on the removed file (a newcomer would then write
    beside it): it takes the lock of the file there now, which then keeps others out."""
    import fcntl
    import threading

    from growlength.errors import GrowLengthError
    from growlength.files import sole_writer

    folder = tmp_path / "cache"
    folder.mkdir()
    holder = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    refused = []

    def waiter():
        with sole_writer(folder, "growlength prepare", wait=True):
            try:
                with sole_writer(folder, "growlength prepare"):
                    pass
            except GrowLengthError as e:
                refused.append(str(e))

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.5)  # the waiter blocks on the holder's lock
    (folder / ".lock").unlink()
    os.close(holder)  # the holder ends, its lock file gone
    thread.join(timeout=60)
    assert not thread.is_alive() and len(refused) == 1 and "is in use by `growlength prepare`" in refused[0]
