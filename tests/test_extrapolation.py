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
    plain, dynamic = losses(run, "none", None), losses(run, "dynamic", 4.0)
    assert dynamic[64] == plain[64] and dynamic[256] == plain[256]
    assert dynamic[1024] != plain[1024]


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
    assert "yarn x2" in capsys.readouterr().out
