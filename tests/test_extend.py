"""Continued pretraining and context extension: --init-from a exported model, with a position policy."""

import json
import math
import shutil
from contextlib import nullcontext

import pytest
import torch
from conftest import tiny_config
from transformers import AutoConfig, AutoModelForCausalLM

from growlength.cli import main
from growlength.errors import GrowLengthError
from growlength.evaluate import val_loss
from growlength.prepare import prepare
from growlength.tokens import open_tokens
from growlength.train import train


def records(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "loss" in r], [r for r in lines if "val_loss" in r]


@pytest.fixture(scope="module")
def exported(corpus, tmp_path_factory):
    """A tiny model trained to 128 (64 -> 128) and exported as a Hugging Face folder."""
    root = tmp_path_factory.mktemp("extend")
    train(tiny_config(corpus, target_len=128, budget_steps=24, evals=1), root / "base", show_progress=False)
    assert main(["export", "--ckpt", str(root / "base"), "--out", str(root / "hf")]) == 0
    return root / "hf"


def exported_loss(folder, corpus, seq_len):
    """The exported folder's val loss at seq_len, through plain transformers."""
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    val = open_tokens(corpus).val
    cpu = torch.device("cpu")
    sizes = dict(eval_tokens=4096, micro_batch_tokens=8192)
    return val_loss(model, val, seq_len, **sizes, device=cpu, autocast=nullcontext)


def test_extends_an_exported_model_to_a_longer_context_with_a_raised_rope_base(exported, corpus, tmp_path):
    out = tmp_path / "extended"
    cfg = tiny_config(
        corpus,
        init_from=str(exported),
        schedule="stages",
        stages="128:0.5,512:0.5",
        target_len=512,
        rope_theta="512:50000",
        budget_steps=8,
        evals=1,
    )
    train(cfg, out, show_progress=False)
    steps, evals = records(out)
    before, after = evals[0]["val_loss_by_len"], evals[-1]["val_loss_by_len"]
    assert before.keys() == after.keys() == {"128", "512"}  # before and after, at each length
    # the run starts from the exported model, not an untrained one (ln 512 = 6.24)
    assert before["128"] == pytest.approx(exported_loss(exported, corpus, 128), abs=1e-4)
    assert steps[0]["loss"] < math.log(512) - 1.0
    assert abs(steps[0]["loss"] - before["128"]) < 0.5
    assert after["512"] < before["512"]  # training at 512 with the new base learned the longer context
    assert [r["seq_len"] for r in steps] == [128] * 4 + [512] * 4
    # the result carries the stage's RoPE and exports like any run
    assert main(["export", "--ckpt", str(out), "--out", str(tmp_path / "hf")]) == 0
    config = AutoConfig.from_pretrained(str(tmp_path / "hf"))
    assert config.rope_parameters["rope_theta"] == 50000.0
    assert config.max_position_embeddings >= 512


def test_yarn_defaults_to_the_context_the_model_was_trained_to(exported, corpus, tmp_path):
    cfg = dict(schedule="stages", stages="256:1", target_len=256, budget_steps=2, evals=1)
    train(tiny_config(corpus, init_from=str(exported), rope_scaling="yarn", **cfg), tmp_path / "run")
    config = json.loads(next((tmp_path / "run" / "checkpoints").glob("*/config.json")).read_text())
    rope = config["rope_parameters"]
    assert rope["rope_type"] == "yarn" and rope["factor"] == 2.0  # 256 over the 128 it was trained to
    assert rope["original_max_position_embeddings"] == 128


def test_init_from_refuses_another_tokenizer_and_other_weight_formats(exported, tmp_path):
    other = tmp_path / "other-data"
    prepare(["shakespeare"], other, vocab_size=300)
    with pytest.raises(GrowLengthError, match="its tokenizer is not the one"):
        train(tiny_config(other, init_from=str(exported), target_len=128), tmp_path / "a", show_progress=False)
    pickled = tmp_path / "pickled"
    shutil.copytree(exported, pickled)
    (pickled / "model.safetensors").unlink()
    with pytest.raises(GrowLengthError, match="no .safetensors weights"):
        train(tiny_config(other, init_from=str(pickled), target_len=128), tmp_path / "b", show_progress=False)
    with pytest.raises(GrowLengthError, match="rope_scaling yarn needs --init-from"):
        tiny_config(other, rope_scaling="yarn")


@pytest.mark.parametrize("checkpointing", [True, False])
def test_init_from_trains_in_train_mode_where_checkpointing_recomputes(exported, corpus, tmp_path, checkpointing):
    """`from_pretrained` hands back a model in eval mode, where transformers neither checkpoints nor drops
    out: an --init-from run must train in train mode. With --activation-checkpointing each block runs
    twice in a step (forward, then again in the backward); without it once (the count is not vacuous)."""
    import time

    from growlength.train import setup, train_step

    cfg = tiny_config(corpus, init_from=str(exported), target_len=128, activation_checkpointing=checkpointing)
    run = setup(cfg, tmp_path / "run", resume=False)
    assert all(module.training for module in run.model.modules())
    calls = []
    # transformers checkpoints a block's forward, not its hooks: count a module inside it (a pre-hook, as
    # the recompute stops early, once it has what the backward needs)
    run.model.gpt_neox.layers[0].attention.register_forward_pre_hook(lambda *_: calls.append(1))
    train_step(run, run.shape_by_len[64], time.perf_counter())
    assert run.shape_by_len[64].accum == 1 and len(calls) == (2 if checkpointing else 1)
