import json
import shutil
import statistics

import numpy as np
import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from growlength.checkpoint import list_checkpoints
from growlength.errors import GrowLengthError
from growlength.schedule import lr_at
from growlength.train import train


def records(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "loss" in r], [r for r in lines if "val_loss" in r]


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
    """24 steps through 64 -> 128 -> 256, evaluated and checkpointed every 8 steps."""
    out = tmp_path_factory.mktemp("runs") / "full"
    train(tiny_config(corpus), out, show_progress=False)
    return out


def test_trains_through_two_stage_changes_and_val_loss_falls(full_run):
    steps, evals = records(full_run)
    seq_lens = [r["seq_len"] for r in steps]
    assert seq_lens == [64] * 8 + [128] * 8 + [256] * 8  # equal shares of a 24-step budget
    assert [e["step"] for e in evals] == [0, 8, 16, 24]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    assert evals[-1]["val_loss_by_len"].keys() == {"64", "128", "256"}
    required = {"step", "tokens", "seq_len", "rows", "loss", "lr", "wall_s", "tokens_per_s"}
    assert all(required <= r.keys() for r in steps)


def test_stage_changes_are_logged_with_the_loss_jump(full_run):
    steps, _ = records(full_run)
    changes = [r for r in steps if r.get("stage_change")]
    assert [r["step"] for r in changes] == [9, 17]
    for change in changes:
        before = [r["loss"] for r in steps if change["step"] - 5 <= r["step"] < change["step"]]
        assert change["loss_jump"] == pytest.approx(change["loss"] - sum(before) / 5)
        jump, noise = change["loss_jump"], statistics.stdev(before)
        assert change["spike"] == (jump > 0 and jump > 3 * noise)


@pytest.mark.parametrize(
    ("loss", "before", "spike"),
    [
        (5.0, [4.0, 4.1, 3.9], True),  # a rise of 1.0 against a noise of 0.1
        (4.2, [4.0, 4.1, 3.9], False),  # 0.2: within 3 standard deviations
        (3.0, [4.0, 4.1, 3.9], False),  # a fall is never a spike
        (4.01, [4.0], True),  # one step to compare: any rise
    ],
)
def test_a_spike_is_a_rise_beyond_three_standard_deviations(loss, before, spike):
    from growlength.steplog import stage_change_record

    record = stage_change_record(loss, before)
    assert record["spike"] is spike and record["loss_jump"] == pytest.approx(loss - statistics.fmean(before))


def test_tokens_per_step_are_constant_across_stages(full_run):
    steps, _ = records(full_run)
    tokens = [0] + [r["tokens"] for r in steps]
    assert {b - a for a, b in zip(tokens, tokens[1:])} == {2048}
    assert {r["rows"] * r["seq_len"] for r in steps} == {2048}
    assert len({r["rows"] for r in steps}) == 3


def test_run_folder_holds_config_and_checkpoints(full_run):
    from growlength.config import load_config

    assert load_config(full_run / "config.yaml") == tiny_config(load_config(full_run / "config.yaml").data)
    names = [p.name for p in list_checkpoints(full_run)]
    assert names == ["step_00000008", "step_00000016", "step_00000024"]
    state = json.loads((list_checkpoints(full_run)[-1] / "state.json").read_text())
    assert state["loader"]["cursor"] == 24 * 2048
    assert state["progress"]["seq_lens"] == [64, 128, 256]


def test_resume_gives_the_same_losses_and_weights(full_run, tmp_path, capsys):
    """Pretend the run died after its step-8 checkpoint: later checkpoints gone, metrics written past it."""
    crashed = tmp_path / "crashed"
    shutil.copytree(full_run, crashed)
    for path in list_checkpoints(crashed)[1:]:
        shutil.rmtree(path)
    with (crashed / "metrics.jsonl").open("a") as f:
        f.write('{"step": 9, "tokens": 1')  # a line cut short by the crash
    train(None, crashed, resume=True, show_progress=False)
    assert "resuming from" in capsys.readouterr().out  # it continued; it did not start over
    got, want = records(crashed), records(full_run)
    assert [r["loss"] for r in got[0]] == [r["loss"] for r in want[0]]  # bit for bit on CPU
    assert without_timing(got) == without_timing(want)
    a = load_file(str(list_checkpoints(full_run)[-1] / "model.safetensors"))
    b = load_file(str(list_checkpoints(crashed)[-1] / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def without_timing(parts):
    timing = {"wall_s", "tokens_per_s", "eval_s"}
    return [[{k: v for k, v in r.items() if k not in timing} for r in part] for part in parts]


def test_rows_constant_baseline_grows_tokens_per_step(corpus, tmp_path):
    out = tmp_path / "rows"
    train(tiny_config(corpus, batch_policy="rows", budget_steps=6, evals=1), out, show_progress=False)
    steps, _ = records(out)
    assert {r["rows"] for r in steps} == {8}
    assert [r["seq_len"] for r in steps] == [64, 64, 128, 128, 256, 256]
    assert steps[-1]["tokens"] == 8 * (2 * 64 + 2 * 128 + 2 * 256)


def test_truncate_and_reshape_baselines(corpus, tmp_path):
    common = dict(schedule="linear", start_len=8, multiple=8, ramp=0.5, budget_steps=6, evals=1)
    train(tiny_config(corpus, batch_policy="truncate", **common), tmp_path / "truncate", show_progress=False)
    steps, evals = records(tmp_path / "truncate")
    assert {r["rows"] for r in steps} == {8}
    assert evals[-1]["data_tokens"] == 6 * 8 * 256 > steps[-1]["tokens"]  # the truncated rest is skipped
    train(tiny_config(corpus, batch_policy="reshape", **common), tmp_path / "reshape", show_progress=False)
    steps, evals = records(tmp_path / "reshape")
    seq_lens = [r["seq_len"] for r in steps]
    assert seq_lens[0] == 8 and seq_lens[-1] == 256 and any(2048 % n for n in seq_lens)  # lengths not dividing
    assert all(2048 - r["seq_len"] < r["rows"] * r["seq_len"] <= 2048 for r in steps)
    assert evals[-1]["data_tokens"] == steps[-1]["tokens"]


def test_skyladder_windows_train_every_token_of_each_sample_at_one_mean(corpus, tmp_path):
    """batch_policy windows: each step trains tokens_per_step tokens, whole windows and each sample's
    remainder as its own row; the step's loss is the mean over every target of both parts."""
    import time

    import torch
    import torch.nn.functional as F

    from growlength.train import read_batch, setup, train_step

    common = dict(schedule="linear", start_len=48, multiple=1, ramp=0.5, batch_policy="windows", evals=1)
    train(tiny_config(corpus, budget_steps=6, **common), tmp_path / "windows", show_progress=False)
    steps, evals = records(tmp_path / "windows")
    assert [r["tokens"] for r in steps] == [2048 * (i + 1) for i in range(6)]
    assert evals[-1]["data_tokens"] == steps[-1]["tokens"]
    assert any(256 % r["seq_len"] for r in steps)  # lengths that leave a fragment

    run = setup(tiny_config(corpus, micro_batch_tokens=512, **common), tmp_path / "one", resume=False)
    shape = run.shape_by_len[100]  # 8 samples of 256: 16 windows of 100 and 8 fragments of 56
    assert [(part.seq_len, part.rows, part.accum) for part in shape.parts] == [(100, 16, 4), (56, 8, 1)]
    state = run.loader.state_dict()
    targets = sum(t.size for _, t in read_batch(run.loader, shape))
    with torch.no_grad():
        total = sum(
            F.cross_entropy(
                run.model(input_ids=torch.from_numpy(x)).logits.flatten(0, 1),
                torch.from_numpy(y).flatten(),
                reduction="sum",
            )
            for x, y in read_batch(_rewound(run.loader, state), shape)
        )
    run.loader.load_state_dict(state)
    loss, _ = train_step(run, shape, time.perf_counter(), ahead=False)
    assert targets == 2048 and loss == pytest.approx(total.item() / targets, rel=1e-5)


def _rewound(loader, state):
    loader.load_state_dict(state)
    return loader


def test_stages_grow_the_batch_with_the_length_and_scale_the_lr(corpus, tmp_path):
    """Grow both: a token budget of 3 stages, the batch doubling with the length and the LR scaled in
    the last; every step holds its stage's tokens and its LR is the schedule's times the multiplier."""
    from growlength.schedule import lr_at

    stages = "64:0.25,128:0.25:4096,256:0.5:8192:1.5"
    cfg = tiny_config(corpus, schedule="stages", stages=stages, budget_steps=None, budget_tokens=65536, evals=1)
    train(cfg, tmp_path / "both", show_progress=False)
    steps, _ = records(tmp_path / "both")
    per_step = [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}, *steps], steps)]
    assert {(r["seq_len"], n) for r, n in zip(steps, per_step, strict=True)} == {
        (64, 2048),
        (128, 4096),
        (256, 8192),
    }
    assert (
        steps[-1]["tokens"] == 65536 and [r["seq_len"] for r in steps].count(256) == 4
    )  # half the tokens, 8192 each
    for r in steps:
        expected = lr_at(r["tokens"] / 65536, lr=cfg.lr, warmup=cfg.warmup, min_lr_ratio=cfg.min_lr_ratio)
        assert r["lr"] == pytest.approx(expected * (1.5 if r["seq_len"] == 256 else 1.0))
    with pytest.raises(GrowLengthError, match="stage 128: tokens_per_step 4000 is not divisible"):
        train(
            tiny_config(corpus, schedule="stages", stages="64:0.5,128:0.5:4000"),
            tmp_path / "bad",
            show_progress=False,
        )


def test_short_fixed_run_is_evaluated_at_the_target(corpus, tmp_path):
    out = tmp_path / "short"
    record = train(
        tiny_config(corpus, schedule="stages", stages="64:1", budget_steps=3, evals=1), out, show_progress=False
    )
    steps, _ = records(out)
    assert {r["seq_len"] for r in steps} == {64}
    assert (
        record["val_loss_by_len"].keys() == {"64", "256"}
        and record["val_loss"] == record["val_loss_by_len"]["256"]
    )


def test_llama_preset_trains_through_a_stage_change(corpus, tmp_path):
    out = tmp_path / "llama"
    record = train(tiny_config(corpus, model="llama-tiny", budget_steps=4, evals=1), out, show_progress=False)
    steps, _ = records(out)
    assert [r["seq_len"] for r in steps] == [64, 64, 128, 256]
    assert record["val_loss"] < steps[0]["loss"]


def test_time_budget_fills_the_stages(corpus, tmp_path):
    out = tmp_path / "timed"
    cfg = tiny_config(corpus, budget_steps=None, budget_seconds=3.0, evals=2)
    train(cfg, out, show_progress=False)
    steps, evals = records(out)
    # it stops at the step that ends nearest the budget (a step's time estimated from the last one at
    # its length), not at the first one past it
    last_step_s = 2048 / steps[-1]["tokens_per_s"]
    assert abs(steps[-1]["wall_s"] - 3.0) <= last_step_s and steps[-2]["wall_s"] < 3.0
    assert [r["seq_len"] for r in steps] == sorted(r["seq_len"] for r in steps)
    assert {r["seq_len"] for r in steps} == {64, 128, 256}
    assert evals[-1]["step"] == steps[-1]["step"]


def test_stage_change_record_calls_a_spike_only_above_the_noise():
    from growlength.steplog import stage_change_record

    assert stage_change_record(5.0, [4.0, 4.0, 4.0]) == {"stage_change": True, "loss_jump": 1.0, "spike": True}
    calm = stage_change_record(4.05, [4.0, 4.1, 3.9, 4.0, 4.05])
    assert calm["loss_jump"] == pytest.approx(0.04) and not calm["spike"]
    assert not stage_change_record(3.5, [4.0])["spike"]  # a drop is never a spike


def test_attention_kernels_and_activation_checkpointing_train_the_same_model(corpus, tmp_path):
    """eager and sdpa attention, with and without recomputed activations: the same losses step by step
    (up to float rounding), so the choice is one of speed and memory only."""
    losses = {}
    for attn, ckpt in (("sdpa", False), ("eager", False), ("sdpa", True)):
        out = tmp_path / f"{attn}-{ckpt}"
        cfg = tiny_config(corpus, budget_steps=6, evals=1, attn_implementation=attn, activation_checkpointing=ckpt)
        train(cfg, out, show_progress=False)
        steps, _ = records(out)
        losses[attn, ckpt] = [r["loss"] for r in steps]
    reference = losses["sdpa", False]
    assert len(reference) == 6 and reference[0] > reference[-1]
    for key, other in losses.items():
        assert other == pytest.approx(reference, rel=1e-4), key


def test_flash_attention_without_its_package_is_refused_before_any_work(corpus, tmp_path):
    from growlength.errors import GrowLengthError

    with pytest.raises(GrowLengthError, match="flash_attention_2 needs `pip install flash-attn`"):
        train(tiny_config(corpus, attn_implementation="flash_attention_2"), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_compile_builds_one_graph_per_stage_length_and_counts_its_time(corpus, tmp_path, monkeypatch):
    """--compile through 64 -> 128 -> 256: a graph at each new length and none after (static shapes,
    evaluation left uncompiled), its seconds logged at the stage's first step and inside wall_s; the
    losses are the eager run's up to the compiler's rounding. Compiled as eager, attention gets no
    materialised mask (None: SDPA's causal path, the flash kernel on a GPU): a model compiled whole
    traces transformers' mask creation, which then always builds a boolean (rows, 1, T, T) mask."""
    from transformers.models.gpt_neox import modeling_gpt_neox

    made = modeling_gpt_neox.create_causal_mask
    losses, masks = {}, {False: [], True: []}
    for compiled in (False, True):

        def recording(*args, compiled=compiled, **kwargs):
            mask = made(*args, **kwargs)
            masks[compiled].append(mask)
            return mask

        monkeypatch.setattr(modeling_gpt_neox, "create_causal_mask", recording)
        out = tmp_path / f"compile-{compiled}"
        train(tiny_config(corpus, budget_steps=9, evals=1, compile=compiled), out, show_progress=False)
        steps, _ = records(out)
        losses[compiled] = [r["loss"] for r in steps]
    assert len(masks[True]) >= 9 and all(mask is None for mask in masks[True] + masks[False])
    assert [r["seq_len"] for r in steps] == [64] * 3 + [128] * 3 + [256] * 3
    assert [r["compiles"] for r in steps] == [1] * 3 + [2] * 3 + [3] * 3
    first_at_length = [0, 3, 6]
    assert all(steps[i]["compile_s"] > 0 for i in first_at_length)
    assert all(r["compile_s"] == 0 for i, r in enumerate(steps) if i not in first_at_length)
    compile_s = sum(r["compile_s"] for r in steps)
    assert compile_s < steps[-1]["wall_s"]  # counted inside the training time
    assert losses[True] == pytest.approx(losses[False], rel=2e-3)
    # a second run in this process (a bench's next recipe) compiles and counts its own graphs: blocks of one
    # class share compiled code, which it would otherwise reuse and report as free
    train(tiny_config(corpus, budget_steps=3, evals=1, compile=True), tmp_path / "again", show_progress=False)
    again, _ = records(tmp_path / "again")
    assert [r["compiles"] for r in again] == [1, 2, 3] and all(r["compile_s"] > 0 for r in again)  # 64, 128, 256


def test_doc_positions_keep_attention_inside_each_document():
    """A row holding the end of one document and the start of the next, with --doc-mask's position ids:
    the second document's logits are those of that document alone in its own row (transformers builds
    the block-diagonal mask from the ids); with plain positions it sees the first document and they are not."""
    from growlength.models import build_model, model_config
    from growlength.tokens import doc_position_ids

    model = build_model(model_config("tiny", vocab_size=64, eos_id=0), seed=0).eval()
    first, second = torch.randint(1, 64, (1, 9)), torch.randint(1, 64, (1, 7))
    row = torch.cat([first, torch.zeros(1, 1, dtype=torch.long), second], dim=1)  # 9 + eos + 7 tokens
    positions = torch.from_numpy(doc_position_ids(row.numpy(), eos_id=0))
    with torch.no_grad():
        alone = model(input_ids=second, use_cache=False).logits[0]
        # no cache, as in training: with one, transformers does not look for packed rows
        masked = model(input_ids=row, position_ids=positions, use_cache=False).logits[0, 10:]
        plain = model(input_ids=row, use_cache=False).logits[0, 10:]
    assert torch.allclose(masked, alone, atol=1e-5)
    assert not torch.allclose(plain, alone, atol=1e-3)


def test_a_doc_masked_run_trains_on_positions_that_restart_at_each_document(corpus, tmp_path, monkeypatch):
    """With --doc-mask every micro-batch reaches the model with position ids restarting after each
    end-of-text token of its rows (which is what makes transformers keep attention inside a document);
    the rows really cross documents, so the ids are not plain 0 .. seq_len - 1."""
    import growlength.train as training
    from growlength.tokens import doc_position_ids, open_tokens

    given = []
    real = training.lm_loss

    def recording(model, inputs_BT, targets_BT, position_ids_BT=None):
        given.append((inputs_BT.cpu().numpy(), position_ids_BT))
        return real(model, inputs_BT, targets_BT, position_ids_BT)

    from pathlib import Path

    from growlength.prepare import prepare

    # many short documents (the README's lines: none near a row's 64 tokens, whatever the README says),
    # so that the rows of every step cross several
    paragraphs = [
        line for line in (Path(__file__).parent.parent / "README.md").read_text().splitlines() if line.strip()
    ]
    (tmp_path / "docs").mkdir()
    for i, paragraph in enumerate(paragraphs * 4):
        (tmp_path / "docs" / f"{i:04d}.txt").write_text(paragraph)
    data = tmp_path / "short-docs"
    prepare([str(tmp_path / "docs")], data, tokenizer_path=str(corpus / "tokenizer.json"), val_fraction=0.2)
    monkeypatch.setattr(training, "lm_loss", recording)
    cfg = tiny_config(data, budget_steps=4, evals=1, doc_mask=True, tokens_per_step=1024, eval_tokens=1024)
    train(cfg, tmp_path / "run", show_progress=False)
    steps, _ = records(tmp_path / "run")
    assert len(steps) == 4 and steps[-1]["loss"] < steps[0]["loss"]
    eos = int(open_tokens(data).meta["eos_id"])
    assert len(given) == 4 and all(positions is not None for _, positions in given)
    for inputs, positions in given:
        np.testing.assert_array_equal(positions.cpu().numpy(), doc_position_ids(inputs, eos))
    assert all((positions.cpu().numpy() != np.arange(inputs.shape[1])).any() for inputs, positions in given)


def test_auto_plans_its_stages_from_a_saved_profile_and_a_resume_never_replans(corpus, tmp_path, monkeypatch):
    """--schedule auto --plan-from: tokens/s 4:1:1 at 64, 128, 256 with auto_power 0.5 gives time shares
    2:1:1, so under a 20-step budget step shares 8:1:1 (time x speed); the table is saved in the
    checkpoints, and a resumed run plans the same stages without measuring or reading the file again."""
    import growlength.train as training

    profile = tmp_path / "profile.json"
    rows = [{"seq_len": n, "tokens_per_s": v} for n, v in ((64, 4000.0), (128, 1000.0), (256, 1000.0), (512, 9.0))]
    profile.write_text(json.dumps({"lengths": rows}))
    cfg = tiny_config(corpus, schedule="auto", plan_from=str(profile), auto_power=0.5, budget_steps=20, evals=2)
    train(cfg, tmp_path / "run", show_progress=False)
    steps, _ = records(tmp_path / "run")
    assert [r["seq_len"] for r in steps] == [64] * 16 + [128] * 2 + [256] * 2
    plan = json.loads((tmp_path / "run" / "auto-plan.json").read_text())
    assert plan["stages"] == "64:0.8000,128:0.1000,256:0.1000"

    # resume from the step-10 checkpoint: the saved table plans the same stages
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_00000020")
    profile.unlink()
    monkeypatch.setattr(training, "measure_tokens_per_s", lambda *a, **k: pytest.fail("a resume measured again"))
    train(None, tmp_path / "run", resume=True, show_progress=False)
    again, _ = records(tmp_path / "run")
    assert [r["seq_len"] for r in again] == [r["seq_len"] for r in steps]


def test_auto_measures_every_candidate_length_at_the_start(corpus, tmp_path, monkeypatch):
    """Measuring is setup: not training time, so a seconds budget's LR warmup starts at the first step.
    (The measuring is made to last 2 s more, so the test does not rest on how fast this machine is.)"""
    import time

    import growlength.train as training

    real = training.measure_tokens_per_s

    def slow(*args, **kwargs):
        time.sleep(2.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "measure_tokens_per_s", slow)
    cfg = tiny_config(corpus, schedule="auto", budget_steps=None, budget_seconds=3.0, warmup=0.9, evals=1)
    train(cfg, tmp_path / "run", show_progress=False)
    plan = json.loads((tmp_path / "run" / "auto-plan.json").read_text())
    assert set(plan["tokens_per_s"]) == {"64", "128", "256"} and all(v > 0 for v in plan["tokens_per_s"].values())
    assert plan["plan_s"] >= 2.0
    steps, _ = records(tmp_path / "run")
    assert {r["seq_len"] for r in steps} <= {64, 128, 256} and steps[-1]["seq_len"] == 256
    assert steps[-1]["wall_s"] < 3.0 + 2048 / steps[-1]["tokens_per_s"]  # the budget is training time alone

    # the first LR is the warmup's at the step's own time; counting the measuring would have put it at
    # the warmup's value at plan_s (2 s or more of its 2.7 s): 0.74 x peak or more
    def lr_after(seconds):
        return lr_at(seconds / 3.0, lr=cfg.lr, warmup=cfg.warmup, min_lr_ratio=cfg.min_lr_ratio)

    assert steps[0]["lr"] <= lr_after(steps[0]["wall_s"]) + 1e-12
    assert steps[0]["lr"] < lr_after(plan["plan_s"]) / 2


def test_reading_ahead_never_changes_the_data_a_step_trains_on(corpus, tmp_path):
    """The next step's batch is read while the device finishes this one, for the length guessed from this
    step's end. A right guess is used as read; a wrong one (a time budget that changes length a step
    early or late) puts the loader back and reads again; a checkpoint saves the state before the read."""
    import numpy as np

    from growlength.train import data_tokens, loader_state, read_ahead, read_batch, setup, take_batch

    run = setup(tiny_config(corpus), tmp_path / "run", resume=False)
    start = run.loader.state_dict()
    [(expected, _)] = read_batch(run.loader, run.shape_by_len[128])
    after = run.loader.state_dict()
    run.loader.load_state_dict(start)
    read_ahead(run, run.shape_by_len[64])
    assert loader_state(run) == start and data_tokens(run) == start["cursor"] == 0
    assert run.loader.state_dict() != start  # it did read
    [rows_BT1] = take_batch(run, run.shape_by_len[128])  # the guess was wrong
    np.testing.assert_array_equal(rows_BT1[:, :-1].numpy(), expected)
    assert rows_BT1.is_contiguous() and rows_BT1.shape == (16, 129)  # inputs and targets as one block
    assert run.loader.state_dict() == after and run.ahead is None
    read_ahead(run, run.shape_by_len[128])
    ahead = run.ahead.parts_BT1
    assert take_batch(run, run.shape_by_len[128]) is ahead  # the guess was right: no second read
