"""GrowLength inside a real `transformers.Trainer` on the CPU: the example script through two stage
changes, its exact resume, and the loss Trainer computes from the dataset's batches."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ONE_THREAD_ENV
from transformers import Trainer, TrainingArguments

from growlength import make_schedule
from growlength.errors import GrowLengthError
from growlength.integrations.hf_trainer import GrowLengthCallback, GrowLengthDataset
from growlength.loss import lm_loss
from growlength.mlm import mlm_token_losses
from growlength.models import build_model, model_config

EXAMPLE = Path(__file__).parent.parent / "examples" / "hf_trainer.py"
SMALL = ["--max-steps", "12", "--start-len", "64", "--target-len", "256", "--tokens-per-batch", "512"]
SMALL += ["--accum", "2", "--save-steps", "6", "--logging-steps", "1", "--hidden", "64", "--layers", "2"]


def run_example(data, out, *extra, processes=1, last=12):
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    result = subprocess.run(
        [*launcher, str(EXAMPLE), "--data", str(data), "--out", str(out), *SMALL, *extra],
        capture_output=True,
        text=True,
        env=ONE_THREAD_ENV,  # one thread a process: the 1-process run is compared with torchrun's
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((out / f"checkpoint-{last}" / "trainer_state.json").read_text())
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


def trainer_args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=1, report_to="none")
    return TrainingArguments(**{**values, "use_cpu": True, "disable_tqdm": True, **overrides})


def first_step_loss(model, args, dataset) -> float:
    """Trainer's logged loss of step 1, the dataset's collator and callback in place."""
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=dataset.collate,
        callbacks=[GrowLengthCallback(dataset)],
    )
    trainer.train()
    return trainer.state.log_history[0]["loss"]


def test_trainer_loss_is_the_mean_over_every_target_token(corpus, tmp_path):
    """Trainer's step-1 loss equals growlength's own loss on the dataset's first two micro-batches."""
    args = trainer_args(tmp_path, gradient_accumulation_steps=2, logging_steps=1, save_strategy="no")
    schedule = make_schedule("constant", start_len=128, target_len=128)
    dataset = GrowLengthDataset(corpus, schedule, args, tokens_per_batch=1024)
    model = build_model(model_config("tiny", vocab_size=512, eos_id=0), seed=0)
    first, second = (dataset.collate([item]) for item, _ in zip(dataset, range(2)))
    assert torch.equal(first["shift_labels"][:, :-1], first["input_ids"][:, 1:])  # the next tokens
    with torch.no_grad():
        expected = sum(lm_loss(model, b["input_ids"], b["shift_labels"]).item() for b in (first, second)) / 2
    assert first_step_loss(model, args, dataset) == pytest.approx(expected, rel=1e-5)


def test_mlm_items_are_masked_as_the_seed_and_item_index_say(corpus, tmp_path):
    schedule = make_schedule("doubling", start_len=64, target_len=256)
    args = trainer_args(tmp_path, max_steps=12, gradient_accumulation_steps=2)
    clm = GrowLengthDataset(corpus, schedule, args, tokens_per_batch=512)
    mlm = GrowLengthDataset(corpus, schedule, args, tokens_per_batch=512, objective="mlm", mask_rate=0.3)
    items = [mlm.collate([item]) for item, _ in zip(mlm, range(24))]
    again = [item for item, _ in zip(mlm, range(24))]
    for item, same, plain in zip(items, again, clm):
        ids, labels, inputs = plain["input_ids"], item["labels"], item["input_ids"]
        chosen = labels != -100
        assert "shift_labels" not in item and inputs.shape == ids.shape
        assert torch.equal(item["input_ids"], same["input_ids"]) and torch.equal(labels, same["labels"])
        assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
        assert set(inputs[chosen & (inputs != ids)].tolist()) - set(range(mlm.vocab_size + 1)) == set()
    chosen = torch.cat([(i["labels"] != -100).flatten() for i in items])
    masked = torch.cat([(i["input_ids"] == mlm.vocab_size).flatten() for i in items])
    assert chosen.float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert masked.sum().item() / chosen.sum().item() == pytest.approx(0.8, abs=0.03)
    assert [i["input_ids"].shape[1] for i in items] == [64] * 8 + [128] * 8 + [256] * 8
    # another seed, other masks on the same rows
    other = GrowLengthDataset(
        corpus, schedule, trainer_args(tmp_path, max_steps=12, seed=1), tokens_per_batch=512, objective="mlm"
    )
    assert not torch.equal(next(iter(other))["labels"] != -100, items[0]["labels"] != -100)


def test_trainer_mlm_loss_is_the_mean_over_every_masked_token_of_the_step(corpus, tmp_path):
    """An encoder's step-1 loss under Trainer: the cross-entropy summed over both micro-batches' chosen
    tokens over their count, as `growlength train --objective mlm` weighs it."""
    args = trainer_args(tmp_path, gradient_accumulation_steps=2, logging_steps=1, save_strategy="no")
    schedule = make_schedule("constant", start_len=128, target_len=128)
    dataset = GrowLengthDataset(corpus, schedule, args, tokens_per_batch=1024, objective="mlm")
    model = build_model(model_config("modernbert-tiny", vocab_size=dataset.vocab_size, eos_id=0), seed=0)
    assert model.config.mask_token_id == dataset.vocab_size
    batches = [dataset.collate([item]) for item, _ in zip(dataset, range(2))]
    with torch.no_grad():
        total = sum(mlm_token_losses(model, b["input_ids"], b["labels"]).sum().item() for b in batches)
    expected = total / sum((b["labels"] != -100).sum().item() for b in batches)
    assert first_step_loss(model, args, dataset) == pytest.approx(expected, rel=1e-5)


def test_the_example_trains_an_encoder_and_resumes_it_exactly(corpus, tmp_path):
    mlm = ["--objective", "mlm", "--max-steps", "8", "--save-steps", "4"]
    logs = run_example(corpus, tmp_path / "mlm", *mlm, last=8)
    assert [r["seq_len"] for r in logs] == [64] * 3 + [128] * 3 + [256] * 2
    assert (tmp_path / "mlm" / "model.safetensors").is_file()
    shutil.rmtree(tmp_path / "mlm" / "checkpoint-8")
    resumed = run_example(corpus, tmp_path / "mlm", *mlm, "--resume", last=8)
    keys = ("step", "seq_len", "loss", "learning_rate", "num_input_tokens_seen")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in logs]


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
    with pytest.raises(GrowLengthError, match="objective must be clm or mlm"):
        GrowLengthDataset(corpus, schedule, args, tokens_per_batch=512, objective="span")
