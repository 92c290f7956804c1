"""Nothing lost: a run killed at any moment resumes as if never stopped; damaged or booby-trapped
checkpoints are never trusted."""

import hashlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CHILD_ENV, cut_back, tiny_config, train_args

from growlength.checkpoint import list_checkpoints, read_state
from growlength.config import save_config
from growlength.errors import GrowLengthError
from growlength.train import train


def losses(run_dir):
    """(step, seq_len, loss) of every whole line of the run's metrics (a live run's last line may be
    half written as we read)."""
    text = (run_dir / "metrics.jsonl").read_text()
    lines = [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]
    return [(r["step"], r["seq_len"], r["loss"]) for r in lines if "loss" in r]


def launch(config_path, out, resume):
    args = [sys.executable, *train_args(config_path, out, *(["--resume"] if resume else []))]
    return subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=CHILD_ENV, start_new_session=True
    )


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_losses(corpus, tmp_path):
    cfg = tiny_config(corpus, budget_steps=360, evals=1, eval_every_tokens=12 * 2048, eval_tokens=1024)
    whole = tmp_path / "whole"
    train(cfg, whole, show_progress=False)
    config_path = tmp_path / "config.yaml"
    save_config(cfg, config_path)
    out, rng = tmp_path / "killed", random.Random(0)
    # killed by progress, not by the clock (a fast machine would finish first, a slow one die in imports):
    # once past a step drawn from each third of the run, then a random fraction of a step later
    for low in (20, 130, 240):
        proc = launch(config_path, out, resume=(out / "config.yaml").is_file())
        wait_for_step(out, rng.randint(low, low + 90), proc)
        time.sleep(rng.uniform(0.0, 0.3))
        assert proc.poll() is None, "the run finished before it was killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    proc = launch(config_path, out, resume=True)
    assert proc.wait(timeout=1200) == 0, proc.stderr.read().decode()  # a hang guard, not a speed bound
    assert losses(out) == losses(whole)  # every step, every loss, bit for bit
    assert read_state(list_checkpoints(out)[-1])["loader"] == read_state(list_checkpoints(whole)[-1])["loader"]


def wait_for_step(out, step, proc, timeout=600):
    """Until the run in `out` has logged `step` (a hang guard, not a speed bound)."""
    deadline = time.monotonic() + timeout
    while not (out / "metrics.jsonl").is_file() or not any(s >= step for s, _, _ in losses(out)):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, f"no step {step} after {timeout} s"
        time.sleep(0.02)


@pytest.fixture
def finished(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(corpus, budget_steps=12, evals=3, eval_tokens=1024), out, show_progress=False)
    return out


def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(finished, recwarn, capsys):
    newest = list_checkpoints(finished)[-1]
    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    before = losses(finished)
    train(None, finished, resume=True, show_progress=False)
    assert "resuming from" in capsys.readouterr().out and "step_00000008" in str(list_checkpoints(finished))
    assert any("does not match its checksum" in str(w.message) for w in recwarn)
    assert losses(finished) == before  # steps 9..12 were trained again, to the same losses


class Booby:
    marker = ""  # set by the test: the file the trap would create

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_booby_trapped_pickle_in_a_checkpoint_is_refused(finished, tmp_path):
    booby = Booby()
    booby.marker = str(tmp_path / "booby-trap-ran")
    newest = list_checkpoints(finished)[-1]
    payload = pickle.dumps(booby)
    (newest / "optimizer.pt").write_bytes(payload)  # never opened: only safetensors and JSON are read
    (newest / "trainer.safetensors").write_bytes(payload)
    state = json.loads((newest / "state.json").read_text())
    state["sha256"]["trainer.safetensors"] = hashlib.sha256(payload).hexdigest()  # even with a valid checksum
    (newest / "state.json").write_text(json.dumps(state))
    with pytest.raises(GrowLengthError, match="refusing to load it"):
        train(None, finished, resume=True, show_progress=False)
    assert booby.marker in payload.decode(errors="replace") and not Path(booby.marker).exists()


def test_a_non_finite_loss_stops_the_run_with_the_last_good_checkpoint_intact(corpus, tmp_path, monkeypatch):
    import growlength.train as loop

    real, calls = loop.lm_loss, []

    def poisoned(model, x, y, *positions):
        loss = real(model, x, y, *positions)
        if model.training:
            calls.append(1)
        return loss * float("nan") if len(calls) > 10 else loss  # from the 11th training step on

    monkeypatch.setattr(loop, "lm_loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(GrowLengthError, match="the loss is nan at step"):
        train(
            tiny_config(corpus, budget_steps=16, eval_every_tokens=4 * 2048, eval_tokens=1024),
            out,
            show_progress=False,
        )
    assert [p.name for p in list_checkpoints(out)] == ["step_00000004", "step_00000008"]


def test_killed_while_writing_a_checkpoint(corpus, finished, tmp_path):
    """SIGKILL halfway through the second checkpoint's weights: the half-written folder is never used;
    the run resumes from the first checkpoint and every loss equals the uninterrupted run's."""
    script = Path(__file__).parent / "die_in_checkpoint.py"
    config_path = finished / "config.yaml"
    out = tmp_path / "killed"
    died = subprocess.run(
        [sys.executable, str(script), "3", *train_args(config_path, out)[2:]], env=CHILD_ENV, capture_output=True
    )
    assert died.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(out)] == ["step_00000004"]
    assert (out / "checkpoints" / ".tmp-step_00000008").is_dir()  # the half-written one, not listed
    resumed = subprocess.run(
        [sys.executable, *train_args(config_path, out, "--resume")], env=CHILD_ENV, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "step_00000004" in resumed.stdout
    assert losses(out) == losses(finished)
    assert not (out / "checkpoints" / ".tmp-step_00000008").exists()


@pytest.mark.parametrize("policy", ["tokens", "windows", "grow-both"])
def test_checkpoint_every_steps_apart_from_the_evals_resumes_exactly(corpus, tmp_path, policy):
    """--checkpoint-every 5 over 12 steps with evaluations at 6 and 12: checkpoints at 5, 10 and the
    end, none at the eval of step 6; the run cut back to step 5 continues with the same losses (also
    for SkyLadder's windows, whose steps have a second part of each sample's remainder, and for stages
    that grow the batch and scale the LR with the length)."""

    shape = {
        "tokens": {},
        "windows": dict(schedule="linear", start_len=40, ramp=0.8, batch_policy="windows"),
        "grow-both": dict(schedule="stages", stages="64:0.3,128:0.3:4096,256:0.4:8192:1.5"),
    }[policy]
    cfg = tiny_config(corpus, budget_steps=12, evals=2, eval_tokens=1024, checkpoint_every=5, **shape)
    whole = tmp_path / "whole"
    train(cfg, whole, show_progress=False)
    assert [p.name for p in list_checkpoints(whole)] == ["step_00000005", "step_00000010", "step_00000012"]
    evals = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if "val_loss" in r] == [0, 6, 12]
    cut = cut_back(whole, tmp_path / "cut", 5)
    train(None, cut, resume=True, show_progress=False)
    assert losses(cut) == losses(whole)
    # the checkpoint's loader state is the one after step 5's batch, not the batch read ahead for step 6
    assert read_state(list_checkpoints(cut)[-1])["loader"] == read_state(list_checkpoints(whole)[-1])["loader"]
