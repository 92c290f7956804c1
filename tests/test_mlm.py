"""--objective mlm: the masking as a pure function, then an encoder trained through a doubling schedule,
resumed exactly, evaluated at many lengths and exported for AutoModelForMaskedLM."""

import json

import pytest
import torch
from conftest import cut_back, tiny_config

from growlength.errors import GrowLengthError
from growlength.mlm import mask_generator, mask_tokens
from growlength.train import train


def test_masking_chooses_the_rate_and_replaces_80_10_10():
    ids = torch.randint(10, 1000, (64, 512))
    inputs, labels = mask_tokens(ids, rate=0.3, mask_id=1000, vocab_size=1000, generator=mask_generator(0, 1, 2))
    chosen = labels != -100
    assert chosen.float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    masked = (inputs == 1000) & chosen
    kept = (inputs == ids) & chosen
    assert masked.sum() / chosen.sum() == pytest.approx(0.8, abs=0.02)
    assert kept.sum() / chosen.sum() == pytest.approx(0.1 + 0.1 / 990, abs=0.02)  # kept, or replaced by itself
    assert not ((inputs == 1000) & ~chosen).any() and inputs.max() <= 1000
    again = mask_tokens(ids, rate=0.3, mask_id=1000, vocab_size=1000, generator=mask_generator(0, 1, 2))
    other = mask_tokens(ids, rate=0.3, mask_id=1000, vocab_size=1000, generator=mask_generator(0, 1, 3))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels) and not torch.equal(other[1], labels)


def test_a_part_masks_as_one_draw_however_its_rows_are_split():
    from growlength.mlm import mask_rows

    ids = torch.randint(10, 1000, (8, 64))
    kw = dict(rate=0.3, mask_id=1000, vocab_size=1000)
    whole = mask_tokens(ids, generator=mask_generator(0, 5, 1), **kw)
    slices = [mask_rows(ids[i : i + 3], 0, 5, 1, first_row=i, rows=8, **kw) for i in (0, 3, 6)]
    for k in (0, 1):  # inputs, labels
        assert torch.equal(torch.cat([piece[k] for piece in slices]), whole[k])
    other = mask_rows(ids, 0, 6, 1, first_row=0, rows=8, **kw)  # another step masks otherwise
    assert not torch.equal(other[1], whole[1])


def test_an_evaluation_masks_each_window_alike_however_its_passes_are_cut():
    from growlength.mlm import mask_windows

    ids = torch.randint(10, 1000, (1200, 128))  # 512 windows to a mask block at 128: three blocks
    kw = dict(rate=0.15, mask_id=1000, vocab_size=1000)
    for rows in (7, 300):
        pieces = [mask_windows(ids[i : i + rows], 0, 128, first_row=i, **kw) for i in range(0, 1200, rows)]
        for k in (0, 1):
            assert torch.equal(torch.cat([p[k] for p in pieces]), mask_windows(ids, 0, 128, first_row=0, **kw)[k])
    labels = mask_windows(ids, 0, 128, first_row=0, **kw)[1]
    assert not torch.equal(labels[:512] != -100, labels[512:1024] != -100)  # each block draws its own
    assert not torch.equal(labels != -100, mask_windows(ids, 0, 256, first_row=0, **kw)[1] != -100)


def test_an_encoders_val_loss_does_not_depend_on_the_micro_batch(corpus):
    import numpy as np

    from growlength.evaluate import autocast_context, loss_by_position, val_loss
    from growlength.models import build_model, model_config

    model = build_model(model_config("modernbert-tiny", vocab_size=1000, eos_id=0), seed=0)
    val = np.random.default_rng(0).integers(1, 1000, 4097).astype(np.int32)
    cpu = torch.device("cpu")
    kw = dict(eval_tokens=4096, device=cpu, autocast=lambda: autocast_context(cpu))
    losses = [val_loss(model, val, 128, micro_batch_tokens=m, objective="mlm", **kw) for m in (128, 1024, 4096)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0] == pytest.approx(losses[2], rel=1e-5)
    sums, counts = loss_by_position(model, val, 128, micro_batch_tokens=256, objective="mlm", **kw)
    assert sums.sum() / counts.sum() == pytest.approx(losses[0], rel=1e-5)
    assert 0.1 < counts.sum() / 4096 < 0.2  # 15% of the tokens scored


def mlm_config(corpus, **overrides):
    return tiny_config(
        corpus, model="modernbert-tiny", objective="mlm", **{"evals": 2, "eval_tokens": 1024, **overrides}
    )


def test_an_encoder_trains_through_the_schedule_resumes_exactly_and_exports(corpus, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from growlength.evaluate import evaluate_checkpoint
    from growlength.export import export

    whole = tmp_path / "whole"
    train(mlm_config(corpus, budget_steps=12, checkpoint_every=6), whole, show_progress=False)
    records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["seq_len"] for r in steps] == [64] * 4 + [128] * 4 + [256] * 4
    evals = [r for r in records if "val_loss" in r]
    assert all(0 < r["val_loss"] < 10 for r in evals) and evals[-1]["val_loss"] < evals[0]["val_loss"]
    cut = cut_back(whole, tmp_path / "cut", 6)
    train(None, cut, resume=True, show_progress=False)
    again = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in again if "loss" in r] == [r["loss"] for r in steps]

    report = evaluate_checkpoint(whole, [64, 256, 512], eval_tokens=1024)
    by_len = {r["seq_len"]: r for r in report["results"]}
    assert by_len.keys() == {64, 256, 512} and by_len[512]["beyond_trained"]
    assert by_len[256]["loss"] == pytest.approx(evals[-1]["val_loss_by_len"]["256"], rel=1e-5)  # the same masks

    out = export(whole, tmp_path / "hf")
    model = AutoModelForMaskedLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.mask_token == "<|mask|>" and tokenizer.mask_token_id == model.config.mask_token_id
    # the padding id is its own: ModernBERT's padding row never trains, and every row holds end-of-text tokens
    assert tokenizer.pad_token_id == model.config.pad_token_id != tokenizer.eos_token_id
    ids = tokenizer("To be, or not to be, that is the <|mask|>", return_tensors="pt").input_ids
    assert (ids == tokenizer.mask_token_id).sum() == 1
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(model="tiny", objective="mlm"), "objective mlm trains an encoder"),
        (dict(model="modernbert-tiny"), "objective clm trains a causal LM"),
        (dict(model="modernbert-tiny", objective="mlm", doc_mask=True), "does not support doc_mask"),
        (dict(model="modernbert-tiny", objective="mlm", mask_rate=1.5), "mask_rate"),
    ],
)
def test_objective_and_model_must_agree(corpus, tmp_path, overrides, message):
    with pytest.raises(GrowLengthError, match=message):
        train(tiny_config(corpus, **overrides), tmp_path / "bad", show_progress=False)
    assert not (tmp_path / "bad").exists()


def test_fsdp_units_keep_the_tied_embeddings_with_the_head():
    """ModernBERT lists its embeddings among its no-split modules, but the decoder shares their weight:
    FSDP2 needs a shared parameter inside one unit, so the embeddings stay in the root with the head."""
    from growlength.models import build_model, model_config, transformer_blocks

    model = build_model(model_config("modernbert-tiny", vocab_size=512, eos_id=0), seed=0)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    units = transformer_blocks(model)
    assert units and all(type(u).__name__ == "ModernBertEncoderLayer" for u in units) and len(units) == 2
    assert (
        model.config.pad_token_id == 513 and model.config.mask_token_id == 512 and model.config.vocab_size == 576
    )


@pytest.mark.parametrize(
    ("schedule", "extra"),
    [
        ("linear", {"tokens_per_step": 1536}),  # 64, 128, 192, 256 all divide it
        ("root", {"tokens_per_step": 1536}),
        ("constant", {}),
        ("stages", {"stages": "64:0.5,256:0.5"}),
        ("deepspeed", {"multiple": 8, "batch_policy": "truncate"}),  # as the peers' recipes
        ("linear", {"multiple": 1, "batch_policy": "windows"}),  # SkyLadder's windows
        ("dd", {}),
        ("auto", {}),
        ("adaptive", {}),
    ],
)
def test_every_schedule_trains_an_encoder(corpus, tmp_path, schedule, extra):
    """Masking sits below the schedule: each one trains an encoder to the target, loss finite and falling."""
    if schedule == "auto":  # planned from a given profile, equal speeds: not from this machine's timings
        rows = [{"seq_len": n, "tokens_per_s": 1000.0} for n in (64, 128, 256)]
        (tmp_path / "profile.json").write_text(json.dumps({"lengths": rows}))
        extra = {"plan_from": str(tmp_path / "profile.json")}
    cfg = mlm_config(corpus, schedule=schedule, budget_steps=10, **extra)
    train(cfg, tmp_path / "run", show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 10 and all(0 < r["loss"] < 20 for r in steps)
    lengths = [r["seq_len"] for r in steps]
    assert set(lengths) <= {64, 128, 256} if schedule == "dd" else lengths[-1] == 256  # dd draws a bucket a step
    assert schedule == "constant" or min(lengths) < 256
    evals = [r for r in records if "val_loss" in r]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
