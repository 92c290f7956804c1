import pytest
from conftest import tiny_config

from growlength.flops import peak_flops
from growlength.models import build_model, count_params, model_config
from growlength.profile import flops_per_token, format_profile, profile


def test_flops_per_token_counts_the_matmuls_and_causal_attention():
    """6 per multiplying parameter, and for attention under the causal mask half of the full count
    (12 x layers x width x seq_len): what the causal kernels compute."""
    untied = build_model(model_config("tiny", vocab_size=512, eos_id=0), 0)  # GPT-NeoX: h64, 2 layers
    embedding = 512 * 64
    expected = 6 * (count_params(untied) - embedding) + 12 * 2 * 64 * 256 / 2
    assert flops_per_token(untied, 256) == expected
    tied = build_model(model_config("llama-tiny", vocab_size=512, eos_id=0), 0)  # the head is the embedding
    assert flops_per_token(tied, 256) == 6 * count_params(tied) + 12 * 2 * 64 * 256 / 2
    # the attention term alone doubles with the length
    assert flops_per_token(tied, 512) - flops_per_token(tied, 256) == 6 * 2 * 64 * 256


def test_peak_flops_come_from_the_override_or_the_device_table():
    assert peak_flops("NVIDIA H200", None) == 989e12 and peak_flops("NVIDIA H100 PCIe", None) == 756e12
    assert peak_flops("NVIDIA H100 NVL", None) == 835e12 and peak_flops("NVIDIA H200 NVL", None) == 835e12
    assert peak_flops("NVIDIA H100 80GB HBM3", None) == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", None) == 312e12 and peak_flops("cpu", None) is None
    assert peak_flops("cpu", 0.5) == 0.5e12


def test_profile_measures_every_length_of_a_real_run(corpus):
    """The live profile: real steps at each length (constant tokens per step), every figure measured
    (positive, finite), and the ratios are those of the measured speeds and of the FLOP count."""
    cfg = tiny_config(corpus, peak_tflops=0.01, doc_mask=True)
    report = profile(cfg, [64, 128, 256], rounds=1, show_progress=False)
    rows = report["lengths"]
    assert [r["seq_len"] for r in rows] == [64, 128, 256]
    assert [r["rows"] for r in rows] == [32, 16, 8]  # constant tokens per step
    for row in rows:
        assert row["step_s"] > 0 and row["first_step_s"] > 0 and row["peak_mb"] > 50  # the libraries alone
        assert row["tokens_per_s"] * row["step_s"] == pytest.approx(2048)
        assert -1 < row["overhead_vs_bare"] < 100 and -1 < row["doc_mask_cost"] < 100
    assert report["checkpoint_s"] > 0 and report["loader_tokens_per_s"] > 0
    assert rows[0]["flops_speedup"] > rows[1]["flops_speedup"] > rows[2]["flops_speedup"] == 1.0
    model = build_model(model_config("tiny", vocab_size=512, eos_id=0), seed=0)
    for row in rows:  # MFU: tokens/s x FLOPs per token over the given peak
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] * flops_per_token(model, row["seq_len"]) / 1e10)
    table = format_profile(report)
    assert "MFU" in table and "doc mask cost" in table
    assert table.count("\n| ") == 3  # one row per length and "tokens of fixed-length training" in table


def test_the_profile_report_from_given_timings():
    """The report's arithmetic on timings given exactly (a table, no clock): the median step at each
    length, speeds against the target's, the loop against the bare one, the first step against the median."""
    from growlength.budget import StepShape
    from growlength.profile import _report

    model = build_model(model_config("tiny", vocab_size=512, eos_id=0), seed=0)
    shapes = [StepShape(seq_len=n, rows=2048 // n, micro_rows=2048 // n, accum=1, row_stride=n) for n in (64, 256)]
    ours = {64: [1.0, 3.0, 2.0], 256: [4.0, 4.0, 5.0]}  # medians 2 s and 4 s
    bare = {64: [1.0, 1.0, 1.0], 256: [5.0, 2.0, 4.0]}  # medians 1 s and 4 s
    peak, first = {64: 900.0, 256: 1000.0}, {64: 10.0, 256: 6.0}
    report = _report(model, shapes, ours, bare, peak, first, checkpoint_s=0.5, loader_tps=1e6, device="cpu")
    short, target = report["lengths"]
    assert (short["step_s"], short["tokens_per_s"], target["tokens_per_s"]) == (2.0, 1024.0, 512.0)
    assert short["measured_speedup"] == 2.0 and target["measured_speedup"] == 1.0
    assert short["flops_speedup"] == flops_per_token(model, 256) / flops_per_token(model, 64)
    assert (short["overhead_vs_bare"], target["overhead_vs_bare"]) == (1.0, 0.0)  # 2 s vs 1 s; 4 s vs 4 s
    assert short["stage_change_vs_step"] is None and target["stage_change_vs_step"] == 1.5  # 6 s vs 4 s
    assert report["doubling_equal_time_token_gain"] == 1.5  # equal time at 1024 and 512 tokens/s vs 512
    assert report["loader_vs_model_at_shortest"] == 1e6 / 1024
    assert report["peak_mb_above_target"] == 0.0 and report["checkpoint_s"] == 0.5
