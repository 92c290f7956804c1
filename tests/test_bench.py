import json

import pytest
from conftest import tiny_config

from growlength.bench import BenchConfig, bench, format_table, run_config, time_to_reach
from growlength.errors import GrowLengthError


@pytest.mark.parametrize(
    ("xs", "losses", "level", "expected"),
    [
        ([0, 10, 20], [5.0, 4.0, 3.0], 3.5, 15.0),
        ([0, 10, 20], [5.0, 4.0, 3.0], 4.0, 10.0),
        ([0, 10, 20], [5.0, 4.0, 3.0], 2.9, None),
        ([0, 10, 20], [3.0, 2.0, 1.0], 5.0, 0),
        ([0, 10, 20, 30], [5.0, 3.0, 4.0, 2.0], 3.5, 7.5),  # the first crossing counts
    ],
)
def test_time_to_reach(xs, losses, level, expected):
    assert time_to_reach(xs, losses, level) == expected


def test_bench_config():
    assert BenchConfig().final_lengths(1024) == [128, 256, 512, 1024, 2048]
    assert BenchConfig(extrapolate="512,64").final_lengths(1024) == [64, 512]
    with pytest.raises(GrowLengthError, match="baseline"):
        BenchConfig(runs="growlength").run_names()


def test_tiny_bench_report_is_computed_from_the_curves(corpus, tmp_path):
    base = tiny_config(corpus, budget_steps=8, evals=4, eval_tokens=1024, tokens_per_step=2048)
    cfg = BenchConfig(runs="fixed-target,growlength,composer", repeats=2, short_len=64)
    report = bench(base, cfg, tmp_path / "b", show_progress=False)
    assert json.loads((tmp_path / "b" / "bench.json").read_text()) == report
    for png in ("bench-loss.png", "bench-throughput.png", "bench-extrapolation.png"):
        assert (tmp_path / "b" / png).read_bytes()[:4] == b"\x89PNG"
    runs = report["runs"]
    assert list(runs) == ["fixed-target", "growlength", "composer"]
    # every run saw the same token budget's steps, and was evaluated at 64 ... 512 (2 x target)
    assert all(r["steps"] == 8 for r in runs.values())
    assert all(list(r["val_loss_by_len"]) == ["64", "128", "256", "512"] for r in runs.values())
    assert runs["fixed-target"]["speedup"] == pytest.approx(1.0)
    assert set(runs["growlength"]["tokens_per_s_by_len"]) == {"64", "128", "256"}
    # composer truncates: it trains on fewer tokens than it reads
    assert runs["composer"]["tokens"] < runs["composer"]["data_tokens"] == 8 * 2048
    # the speedup is the baseline's time to its final loss over the run's, from the saved curves
    for name, run in runs.items():
        for repeat, reach in enumerate(run["reach_baseline"]):
            base_curve = _curve(tmp_path / "b" / "fixed-target" / f"repeat{repeat}")
            curve = _curve(tmp_path / "b" / name / f"repeat{repeat}")
            expected = time_to_reach(curve[0], curve[1], base_curve[1][-1])
            assert (reach and reach["seconds"]) == expected
    table = format_table(report)
    assert table.count("\n") == 2 + len(runs) - 1 and "| fixed-target |" in table


def _curve(folder):
    evals = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if "val_loss" in e]
    return [e["wall_s"] for e in evals], [e["val_loss"] for e in evals]


def test_run_config_overrides_only_the_recipe(corpus):
    base = tiny_config(corpus)
    cfg = run_config(base, "growlength", 1, BenchConfig())
    assert (cfg.schedule, cfg.seed, cfg.eval_seen_lengths, cfg.model) == ("doubling", base.seed + 1, False, "tiny")


def test_a_bad_recipe_config_fails_before_any_run(corpus, tmp_path):
    # fixed-target at 192 divides 576 tokens per step; growlength's 128 does not
    base = tiny_config(corpus, target_len=192, tokens_per_step=576)
    with pytest.raises(GrowLengthError, match="bench run growlength: .* at seq_len \\[128\\]"):
        bench(base, BenchConfig(runs="fixed-target,growlength"), tmp_path / "b", show_progress=False)
    assert not (tmp_path / "b").exists()
