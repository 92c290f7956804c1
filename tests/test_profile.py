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


def test_profile_reports_every_length_against_the_target(corpus):
    cfg = tiny_config(corpus, peak_tflops=0.01, doc_mask=True)
    report = profile(cfg, [64, 128, 256], rounds=1, show_progress=False)
    rows = report["lengths"]
    assert [r["seq_len"] for r in rows] == [64, 128, 256]
    assert [r["rows"] for r in rows] == [32, 16, 8]  # constant tokens per step
    assert rows[-1]["measured_speedup"] == pytest.approx(1.0)
    assert rows[0]["flops_speedup"] > rows[1]["flops_speedup"] > rows[2]["flops_speedup"] == 1.0
    # a stage change costs the first step at the new length against that length's median step
    assert rows[0]["stage_change_vs_step"] is None
    for row in rows[1:]:
        assert row["stage_change_vs_step"] == pytest.approx(row["first_step_s"] / row["step_s"])
    assert report["loader_vs_model_at_shortest"] > 1
    gain = sum(r["tokens_per_s"] for r in rows) / 3 / rows[-1]["tokens_per_s"]
    assert report["doubling_equal_time_token_gain"] == pytest.approx(gain)
    model = build_model(model_config("tiny", vocab_size=512, eos_id=0), seed=0)
    for row in rows:  # MFU: tokens/s x FLOPs per token over the given peak
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] * flops_per_token(model, row["seq_len"]) / 1e10)
    # --doc-mask: rows that each cross a document boundary against plain rows, at every length
    assert all(-0.9 < row["doc_mask_cost"] < 20 for row in rows)  # a ratio of timings: loose under load
    table = format_profile(report)
    assert "MFU" in table and "doc mask cost" in table
    assert table.count("\n| ") == 3  # one row per length and "tokens of fixed-length training" in table
