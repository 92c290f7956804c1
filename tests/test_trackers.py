"""TensorBoard event files beside metrics.jsonl, read back with TensorBoard's own reader."""

import json
import shutil
import subprocess
import sys
import time

import pytest
from conftest import tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from growlength.checkpoint import list_checkpoints
from growlength.errors import GrowLengthError
from growlength.trackers import tracker_names
from growlength.train import train


def read_events(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tb") / "run"
    train(tiny_config(corpus, budget_steps=12, evals=2, eval_tokens=1024), out, show_progress=False)
    return out


def test_every_record_is_in_tensorboard(run):
    scalars = read_events(run)
    steps = [r for r in records(run) if "loss" in r]
    evals = [r for r in records(run) if "val_loss" in r]
    for name in ("loss", "seq_len", "lr", "tokens_per_s", "tokens"):
        expected = [(r["step"], pytest.approx(r[name], rel=1e-6)) for r in steps]
        assert scalars[f"train/{name}"] == expected
    assert [v for _, v in scalars["train/seq_len"]] == [64] * 4 + [128] * 4 + [256] * 4
    assert scalars["val/loss"] == [(r["step"], pytest.approx(r["val_loss"], rel=1e-6)) for r in evals]
    for n in ("64", "128", "256"):
        assert scalars[f"val/loss_at_{n}"][-1] == (12, pytest.approx(evals[-1]["val_loss_by_len"][n], rel=1e-6))


def test_a_resumed_run_logs_each_step_once(run, tmp_path):
    """Cut back to the step-6 checkpoint and resume: TensorBoard drops the steps the first run logged
    after it (purge_step), as metrics.jsonl does, so each step appears once."""
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    for path in list_checkpoints(moved)[1:]:
        shutil.rmtree(path)
    train(None, moved, resume=True, show_progress=False)
    scalars = read_events(moved)
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 13))
    assert scalars["train/loss"] == read_events(run)["train/loss"]


def test_log_to_is_checked_before_any_work(corpus, tmp_path):
    assert tracker_names("none") == [] and tracker_names("tensorboard") == ["tensorboard"]
    with pytest.raises(GrowLengthError, match="choose tensorboard, wandb"):
        tracker_names("tensorbored")
    train(
        tiny_config(corpus, budget_steps=1, evals=1, eval_tokens=1024, log_to="none"),
        tmp_path / "r",
        show_progress=False,
    )
    assert not (tmp_path / "r" / "tensorboard").exists() and (tmp_path / "r" / "metrics.jsonl").is_file()


def test_importing_growlength_imports_no_integration():
    code = (
        "import sys, growlength, growlength.train, growlength.cli, growlength.bench\n"
        "heavy = ('transformers.trainer', 'accelerate', 'tensorboard', 'torch.utils.tensorboard', 'wandb')\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def wandb_history(run_file) -> list[dict]:
    """The history rows of an offline W&B run file: a LevelDB-style log (7-byte header, 32 KiB blocks of
    chunks with a 7-byte CRC/length/type header) of W&B's own protobuf Records."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, pending, rows = run_file.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):
            pos += left  # block padding
            continue
        if pos + 7 + length > len(data):
            break  # a chunk W&B's writer has not finished: the caller reads again
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record.FromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
    return rows


def test_weights_and_biases_gets_the_same_records(corpus, tmp_path):
    """log_to tensorboard,wandb: the offline W&B run in OUT/wandb holds every record, at its step."""
    cfg = tiny_config(corpus, budget_steps=4, evals=1, eval_tokens=1024, log_to="tensorboard,wandb")
    train(cfg, tmp_path / "r", show_progress=False)
    (run_file,) = (tmp_path / "r" / "wandb").glob("offline-run-*/run-*.wandb")
    steps = {record["step"] for record in records(tmp_path / "r")}
    # wandb-core, a process of its own, may still be writing the file on a busy machine: read until whole
    deadline = time.time() + 120
    while not steps <= (history := {row["_step"]: row for row in wandb_history(run_file)}).keys():
        assert time.time() < deadline, sorted(steps - history.keys())
        time.sleep(0.5)
    for record in records(tmp_path / "r"):
        row = history[record["step"]]
        if "loss" in record:
            assert row["train/loss"] == pytest.approx(record["loss"]) and row["train/seq_len"] == record["seq_len"]
        else:
            assert row["val/loss"] == pytest.approx(record["val_loss"])
