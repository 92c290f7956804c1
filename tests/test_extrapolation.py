"""`growlength eval --rope-scaling`: the model config's own RoPE parameters, checked against plain RoPE."""

import json

import pytest
import torch
from conftest import tiny_config
from transformers import AutoConfig

from growlength.cli import main
from growlength.errors import GrowLengthError
from growlength.evaluate import evaluate_checkpoint, rope_scaled
from growlength.train import train

LENGTHS = [64, 256, 1024]  # trained up to 256


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("rope") / "run"
    train(tiny_config(corpus, budget_steps=12, evals=1, eval_tokens=1024), out, show_progress=False)
    return out


def losses(run, mode, factor):
    report = evaluate_checkpoint(run, LENGTHS, eval_tokens=2048, rope_scaling=(mode,), rope_factor=factor)
    assert report["longest_trained"] == 256
    return {r["seq_len"]: r["loss"] for r in report["results"]}


def test_factor_one_changes_nothing(run):
    plain = losses(run, "none", None)
    for mode in ("linear", "yarn"):
        assert losses(run, mode, 1.0) == pytest.approx(plain, rel=1e-6, abs=1e-6)


def test_dynamic_acts_only_beyond_the_trained_length(run):
    """The losses up to the trained length are plain RoPE's; beyond it the rotations change (checked on
    the rotations: a 12-step model's loss at 1,024 can come out bit-identical on some machines)."""
    plain, dynamic = losses(run, "none", None), losses(run, "dynamic", 4.0)
    assert dynamic[64] == plain[64] and dynamic[256] == plain[256]
    plain_rotary, dynamic_rotary = rotary(run, "none", 1.0), rotary(run, "dynamic", 4.0)
    x = torch.zeros(1, 1, 8)
    for n, changes in ((256, False), (1024, True)):
        positions = torch.arange(n).unsqueeze(0)
        moved = (dynamic_rotary(x, positions)[1] - plain_rotary(x, positions)[1]).abs().max().item()
        assert (moved > 1e-3) == changes, (n, moved)


def rotary(run, mode, factor):
    """The rotary embedding module of the checkpoint's model under a RoPE scaling."""
    from growlength.checkpoint import model_from_checkpoint

    path = run / "checkpoints" / "step_00000012"
    model = model_from_checkpoint(
        path, rope_scaled(AutoConfig.from_pretrained(str(path)), mode, factor, 256), "cpu"
    )
    return next(m for m in model.modules() if hasattr(m, "inv_freq"))


def inv_freq(run, mode, factor):
    return rotary(run, mode, factor).inv_freq


def test_linear_scaling_puts_position_4p_where_plain_rope_put_p(run):
    """Linear x4 is position interpolation: at every length the rotation at position 4p is plain RoPE's at
    p, and no position keeps its plain rotation but 0. (Checked on the positions themselves: a 12-step
    model's loss can come out bit-identical with and without the scaling on some machines.)"""
    plain, linear = rotary(run, "none", 1.0), rotary(run, "linear", 4.0)
    x = torch.zeros(1, 1, 8)
    for n in LENGTHS:
        positions = torch.arange(n).unsqueeze(0)
        cos_plain, sin_plain = plain(x, positions)
        cos_linear, sin_linear = linear(x, positions * 4)
        torch.testing.assert_close(cos_linear, cos_plain, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sin_linear, sin_plain, rtol=1e-4, atol=1e-4)
        moved = (linear(x, positions)[1] - sin_plain).abs().amax(dim=-1)[0]
        assert moved[0] == 0 and (moved[1:] > 1e-3).all()  # the same positions do rotate otherwise


def test_the_rotary_frequencies_follow_each_method(run):
    plain = inv_freq(run, "none", 1.0)
    assert torch.allclose(inv_freq(run, "linear", 4.0), plain / 4)  # positions interpolated 4x
    assert torch.equal(inv_freq(run, "dynamic", 4.0), plain)  # until a sequence passes 256
    yarn = inv_freq(run, "yarn", 4.0)
    assert torch.allclose(yarn[0], plain[0]) and torch.allclose(yarn[-1], plain[-1] / 4)  # fast kept, slow x4


def test_the_scaled_config_is_hugging_faces_own(run):
    cfg = AutoConfig.from_pretrained(str(run / "checkpoints" / "step_00000012"))
    yarn = rope_scaled(cfg, "yarn", 4.0, 256)
    assert yarn.rope_parameters["rope_type"] == "yarn" and yarn.rope_parameters["factor"] == 4.0
    assert yarn.rope_parameters["original_max_position_embeddings"] == 256
    assert cfg.rope_parameters["rope_type"] == "default"  # the checkpoint's config is left alone
    assert rope_scaled(cfg, "none", 4.0, 256) is cfg
    with pytest.raises(GrowLengthError, match="choose none, linear, dynamic, yarn"):
        rope_scaled(cfg, "ntk", 2.0, 256)
    with pytest.raises(GrowLengthError, match="at least 1"):
        rope_scaled(cfg, "linear", 0.5, 256)


def test_eval_compares_models_and_modes_in_one_plot(run, tmp_path, capsys):
    args = ["eval", "--ckpt", str(run), "--ckpt", str(run), "--lengths", "64,512", "--eval-tokens", "1024"]
    args += ["--rope-scaling", "none,yarn", "--plot", str(tmp_path / "ext.png"), "--out", str(tmp_path / "e.json")]
    assert main(args) == 0
    reports = json.loads((tmp_path / "e.json").read_text())
    assert len(reports) == 2
    assert [(r["rope_scaling"], r["seq_len"]) for r in reports[0]["results"]] == [
        ("none", 64),
        ("none", 512),
        ("yarn", 64),
        ("yarn", 512),
    ]
    assert reports[0]["results"][2]["rope_factor"] == 2.0  # default: 512 / 256
    assert (tmp_path / "ext.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "ext-positions.png").read_bytes()[:4] == b"\x89PNG"  # loss by position, per model
    assert "yarn x2" in capsys.readouterr().out
    # lengths all below the trained one, or no plain RoPE: still a plot of what there is, or none
    short = [
        "eval",
        "--ckpt",
        str(run),
        "--lengths",
        "64",
        "--eval-tokens",
        "1024",
        "--out",
        str(tmp_path / "s.json"),
    ]
    assert main([*short, "--plot", str(tmp_path / "short.png")]) == 0
    assert (tmp_path / "short-positions.png").is_file()
    assert main([*short, "--rope-scaling", "yarn", "--plot", str(tmp_path / "yarn.png")]) == 0
    assert (tmp_path / "yarn.png").is_file() and not (tmp_path / "yarn-positions.png").exists()


@pytest.mark.parametrize(
    ("seq_len", "target", "buckets"),
    [
        (2048, 2048, [(1, 64), (65, 256), (257, 1024), (1025, 2048)]),
        (100, 2048, [(1, 64), (65, 100)]),
        (64, 256, [(1, 64)]),
        (16384, 8192, [(1, 64), (65, 256), (257, 1024), (1025, 4096), (4097, 8192), (8193, 16384)]),
        (512, 256, [(1, 64), (65, 256), (257, 512)]),
    ],
)
def test_position_buckets_cover_the_window_once_and_end_at_the_target(seq_len, target, buckets):
    from growlength.evaluate import position_buckets

    assert position_buckets(seq_len, target) == buckets


def test_loss_by_position_is_the_causal_loss_at_each_position(run):
    """Position p's loss over windows of 256 is the loss of the model given only the window's first p
    tokens (causality), and the positions' mean is the window's val loss."""
    from growlength.checkpoint import model_from_checkpoint, open_checkpoint
    from growlength.evaluate import loss_by_position, val_loss
    from growlength.tokens import eval_windows

    opened = open_checkpoint(run, None)
    model = model_from_checkpoint(opened.path, opened.model_cfg, "cpu")
    kwargs = dict(eval_tokens=2048, micro_batch_tokens=1024, device=torch.device("cpu"), autocast=torch.no_grad)
    sums_T, counts_T = loss_by_position(model, opened.data.val, 256, **kwargs)
    assert sums_T.shape == counts_T.shape == (256,) and set(counts_T) == {8}  # 2048 tokens: 8 windows
    losses_T = sums_T / counts_T
    assert losses_T.mean() == pytest.approx(val_loss(model, opened.data.val, 256, **kwargs), abs=1e-5)
    inputs, targets = eval_windows(opened.data.val, 256, 2048)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(inputs[:, :40])).logits
    alone = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), torch.from_numpy(targets[:, :40]).flatten(), reduction="none"
    )
    assert losses_T[:40] == pytest.approx(alone.view(-1, 40).double().mean(0).numpy(), abs=1e-5)


def test_eval_reports_the_loss_by_position_beyond_the_target(run):
    report = evaluate_checkpoint(run, [256, 1024], eval_tokens=2048)
    by_len = {r["seq_len"]: r for r in report["results"]}
    buckets = by_len[1024]["loss_by_position"]
    assert [b["positions"] for b in buckets] == [[1, 64], [65, 256], [257, 1024]]
    sizes = [b - a + 1 for a, b in (x["positions"] for x in buckets)]
    mean = sum(x["loss"] * n for x, n in zip(buckets, sizes, strict=True)) / 1024
    assert mean == pytest.approx(by_len[1024]["loss"], abs=1e-5)
