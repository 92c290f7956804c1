"""GrowLength inside a real `transformers.Trainer` on the CPU: the example script through two stage
changes, its exact resume, and the loss Trainer computes from the dataset's batches."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CHILD_ENV
from transformers import Trainer, TrainingArguments

from growlength import make_schedule
from growlength.errors import GrowLengthError
from growlength.integrations.hf_trainer import GrowLengthCallback, GrowLengthDataset
from growlength.loss import lm_loss
from growlength.models import build_model, model_config

EXAMPLE = Path(__file__).parent.parent / "examples" / "hf_trainer.py"
SMALL = ["--max-steps", "12", "--start-len", "64", "--target-len", "256", "--tokens-per-batch", "512"]
SMALL += ["--accum", "2", "--save-steps", "6", "--logging-steps", "1", "--hidden", "64", "--layers", "2"]


def run_example(data, out, *extra, processes=1):
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    result = subprocess.run(
        [*launcher, str(EXAMPLE), "--data", str(data), "--out", str(out), *SMALL, *extra],
        capture_output=True,
        text=True,
        env={**CHILD_ENV, "OMP_NUM_THREADS": "1"} if processes > 1 else CHILD_ENV,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())
    return [r for r in state["log_history"] if "loss" in r]


@pytest.fixture(scope="module")
def example_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "run"
    return out, run_example(corpus, out)


def test_the_length_follows_the_schedule_at_constant_tokens_per_step(example_run):
    _, logs = example_run
    assert [r["step"] for r in logs] == list(range(1, 13))
    assert [r["seq_len"] for r in logs] == [64] * 4 + [128] * 4 + [256] * 4
    # 512 tokens per micro-batch x 2 micro-batches per step, at every length: Trainer's own count agrees
    assert [r["num_input_tokens_seen"] for r in logs] == [1024 * s for s in range(1, 13)]
    assert [r["tokens"] for r in logs] == [1024 * s for s in range(1, 13)]
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.3


def test_resume_from_a_trainer_checkpoint_continues_exactly(corpus, example_run, tmp_path):
    out, logs = example_run
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    shutil.rmtree(moved / "checkpoint-12")
    resumed = run_example(corpus, moved, "--resume")
    keys = ("step", "seq_len", "loss", "learning_rate", "num_input_tokens_seen")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in logs]


def test_two_processes_train_what_one_process_trains_with_twice_the_accumulation(corpus, example_run, tmp_path):
    """torchrun, 2 processes x 1 micro-batch per step against 1 process x 2: the same global batches."""
    _, logs = example_run
    two = run_example(corpus, tmp_path / "two", "--accum", "1", processes=2)
    keys = ("step", "seq_len", "num_input_tokens_seen")
    assert [[r[k] for k in keys] for r in two] == [[r[k] for k in keys] for r in logs]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in logs], abs=1e-5)


def test_trainer_loss_is_the_mean_over_every_target_token(corpus, tmp_path):
    """Trainer's step-1 loss equals growlength's own loss on the dataset's first two micro-batches."""
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    schedule = make_schedule("constant", start_len=128, target_len=128)
    dataset = GrowLengthDataset(corpus, schedule, args, tokens_per_batch=1024)
    model = build_model(model_config("tiny", vocab_size=512, eos_id=0), seed=0)
    first, second = (dataset.collate([item]) for item, _ in zip(dataset, range(2)))
    assert torch.equal(first["shift_labels"][:, :-1], first["input_ids"][:, 1:])  # the next tokens
    with torch.no_grad():
        expected = sum(lm_loss(model, b["input_ids"], b["shift_labels"]).item() for b in (first, second)) / 2
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=dataset.collate,
        callbacks=[GrowLengthCallback(dataset)],
    )
    trainer.train()
    assert trainer.state.log_history[0]["loss"] == pytest.approx(expected, rel=1e-5)


def test_arguments_that_break_the_token_accounting_are_refused(corpus, tmp_path):
    schedule = make_schedule("doubling", start_len=64, target_len=256)
    common = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(GrowLengthError, match="per_device_train_batch_size=1"):
        GrowLengthDataset(corpus, schedule, TrainingArguments(max_steps=10, **common), tokens_per_batch=512)
    with pytest.raises(GrowLengthError, match="set max_steps"):
        args = TrainingArguments(per_device_train_batch_size=1, **common)
        GrowLengthDataset(corpus, schedule, args, tokens_per_batch=512)
    with pytest.raises(GrowLengthError, match="does not split into whole rows"):
        args = TrainingArguments(max_steps=10, per_device_train_batch_size=1, **common)
        GrowLengthDataset(corpus, schedule, args, tokens_per_batch=500)
