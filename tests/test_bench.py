import json
import tarfile

import pytest
from conftest import tiny_config

from growlength.bench import bench, run_config
from growlength.config import BenchConfig, parse_sweep
from growlength.errors import GrowLengthError
from growlength.report import format_sweep, format_table, time_to_reach
from growlength.trackers import read_metrics


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


def test_sweep_grid():
    assert parse_sweep(None) == [{}]
    points = parse_sweep("lr=1e-3,2e-3 tokens_per_step=2048,8192")
    assert points == [
        {"lr": 1e-3, "tokens_per_step": 2048},
        {"lr": 1e-3, "tokens_per_step": 8192},
        {"lr": 2e-3, "tokens_per_step": 2048},
        {"lr": 2e-3, "tokens_per_step": 8192},
    ]
    for bad, words in (("lr", "KEY=V1,V2"), ("lrr=1", "did you mean 'lr'"), ("lr=1 lr=2", "twice")):
        with pytest.raises(GrowLengthError, match=words):
            parse_sweep(bad)


def test_bench_config():
    assert BenchConfig().final_lengths(1024) == [128, 256, 512, 1024, 2048]
    assert BenchConfig(extrapolate="512,64").final_lengths(1024) == [64, 512]
    with pytest.raises(GrowLengthError, match="baseline"):
        BenchConfig(runs="growlength").run_names()


def test_tiny_arena_sweeps_then_compares_best_against_best_at_equal_time(corpus, tmp_path):
    base = tiny_config(corpus, budget_steps=None, budget_seconds=2.5, evals=4, eval_tokens=1024)
    cfg = BenchConfig(
        runs="fixed-target,growlength,skyladder", repeats=2, sweep="lr=2e-3,6e-3", equal_tokens=True, short_len=64
    )
    report = bench(base, cfg, tmp_path / "b", show_progress=False)
    out = tmp_path / "b"
    assert json.loads((out / "bench.json").read_text()) == report
    pngs = (
        "bench-loss.png",
        "bench-throughput.png",
        "bench-extrapolation.png",
        "bench-sweep.png",
        "bench-positions.png",
    )
    for png in pngs:
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    runs = report["runs"]
    assert list(runs) == ["fixed-target", "growlength", "skyladder"] and report["seeds"] == [1, 2]
    # each recipe's best point is the sweep's lowest final loss, and its seeds ran that point
    for name, rows in report["sweep"].items():
        best = min(rows, key=lambda row: row["final_val_loss"])
        assert runs[name]["setting"] == best["setting"]
        for seed in (1, 2):
            saved = (out / name / f"seed{seed}" / "config.yaml").read_text()
            assert f"lr: {best['setting']['lr']}" in saved and f"seed: {seed}" in saved
    # equal time: every step was taken by the budget's rule (it was expected to end nearer the budget
    # than stopping before it), and each run stopped when the next step no longer would (a check of the
    # rule on the logged times: no bound on how steady the machine's speed stayed)
    for name in runs:
        for seed in (1, 2):
            _check_the_time_budget_rule(out / name / f"seed{seed}", budget=2.5)
    # the speedup is the baseline's end over the time the run's curve crosses the baseline's final loss,
    # and the bracketing evaluations bound it
    for name, run in runs.items():
        for seed, speedup in zip((1, 2), run["speedup_each"], strict=True):
            base_s, base_loss = _curve(out / "fixed-target" / f"seed{seed}")
            xs, losses = _curve(out / name / f"seed{seed}")
            if speedup is None:
                assert min(losses) > base_loss[-1]
                continue
            i = next(i for i, loss in enumerate(losses) if loss <= base_loss[-1])
            at = xs[i - 1] + (xs[i] - xs[i - 1]) * (losses[i - 1] - base_loss[-1]) / (losses[i - 1] - losses[i])
            assert speedup["at"] == pytest.approx(base_s[-1] / at)
            # the bracket is the two evaluations around the crossing: the one before it and the first at or below
            assert speedup["low"] == pytest.approx(base_s[-1] / xs[i])
            assert speedup["high"] == (pytest.approx(base_s[-1] / xs[i - 1]) if xs[i - 1] > 0 else None)
    # equal tokens: every recipe's rerun trained the baseline's mean tokens (to within the last step)
    budget = round(runs["fixed-target"]["tokens"])
    for run in runs.values():
        assert all(budget <= t < budget + base.tokens_per_step for t in run["equal_tokens"]["tokens_each"])
    provenance = report["provenance"]
    assert len(provenance["git_commit"]) == 40 and provenance["torch_threads"] >= 1 and provenance["cpu"]
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
    assert "sweep/growlength/lr-0.006/metrics.jsonl" in names and "skyladder/seed2/final-eval.json" in names
    assert len([n for n in names if n.endswith("metrics.jsonl")]) == 3 * (2 + 2 + 2)
    table = format_table(report)
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(runs) and "| fixed-target | lr=0.00" in table
    # the ceiling: the fastest length's median tokens/s over the target's, from the runs' own steps
    limit = report["ceiling"]
    speeds = limit["tokens_per_s_by_len"]
    assert limit["speedup"] == pytest.approx(max(speeds.values()) / speeds["256"])
    for seq_len in speeds:  # only lengths some recipe trained at for 5 steps or more (its seeds together)
        assert max(run["steps_by_len"].get(seq_len, 0) for run in runs.values()) >= 5
    assert f"at most {limit['speedup']:.2f}x here" in table
    # speedup = learning x cheaper tokens, seed by seed
    for run in runs.values():
        for s, g, c in zip(run["speedup_each"], run["token_gain_each"], run["cheaper_tokens_each"], strict=True):
            assert (s is None or g is None) == (c is None)
            assert c is None or s["at"] == pytest.approx(g["at"] * c)
    # the loss by position at the target and beyond it: buckets ending at the target, averaging to the loss
    for run in runs.values():
        buckets = run["val_loss_by_position"]["512"]
        assert [b["positions"] for b in buckets] == [[1, 64], [65, 256], [257, 512]]
        mean = sum(b["loss"] * (b["positions"][1] - b["positions"][0] + 1) for b in buckets) / 512
        assert mean == pytest.approx(run["val_loss_by_len"]["512"], abs=1e-5)
    sweep = format_sweep(report)
    assert sweep.startswith("| run | lr=0.002 | lr=0.006 |") and sweep.count("**") == 2 * len(runs)
    # the model's size: the parameters of the model the runs trained; and the ladder's view of this bench
    from transformers import AutoConfig, AutoModelForCausalLM

    from growlength.checkpoint import list_checkpoints
    from growlength.cli import main
    from growlength.models import count_params

    trained = AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(list_checkpoints(out / "growlength" / "seed1")[-1])
    )
    assert report["params"] == count_params(trained)
    assert main(["scale", str(out), "--out", str(tmp_path / "scale")]) == 0
    rows = json.loads((tmp_path / "scale" / "scale.json").read_text())["rows"]
    assert [r["recipe"] for r in rows] == sorted(runs) and (tmp_path / "scale" / "scale.png").read_bytes()[
        :4
    ] == b"\x89PNG"
    assert rows[0]["tokens_per_param"] == pytest.approx(runs["fixed-target"]["tokens"] / report["params"])


def _check_the_time_budget_rule(run_dir, budget: float) -> None:
    """train.worth_a_step, replayed on the logged steps: a step is taken while the time so far plus half
    its estimate (the last step's time at its length, else the last step's) is within the budget."""
    steps, _ = read_metrics(run_dir)
    seconds, last, by_len = 0.0, 0.0, {}
    for r in steps:
        step_s = r["wall_s"] - seconds
        assert seconds + by_len.get(r["seq_len"], last) / 2 <= budget + 1e-3, (run_dir, r["step"])
        seconds, last, by_len[r["seq_len"]] = r["wall_s"], step_s, step_s
    assert seconds + max(by_len.values()) / 2 > budget - 1e-3, run_dir  # and it did not stop early


def test_a_peer_that_crashes_is_a_result(corpus, tmp_path):
    # 8 batches: Composer's SeqLengthWarmup divides by zero; the others run, the report says so
    base = tiny_config(corpus, budget_steps=8, evals=2, eval_tokens=1024)
    cfg = BenchConfig(runs="fixed-target,composer,deepspeed-reshape", repeats=1, short_len=64)
    report = bench(base, cfg, tmp_path / "b", show_progress=False)
    assert "ZeroDivisionError" in report["runs"]["composer"]["crash"]
    assert not (tmp_path / "b" / "composer").exists()
    assert report["runs"]["deepspeed-reshape"]["steps"] == 8
    assert "crashes in the peer's own code" in format_table(report)


def _curve(folder):
    evals = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if "val_loss" in e]
    return [e["wall_s"] for e in evals], [e["val_loss"] for e in evals]


def test_run_config_overrides_only_the_recipe_then_the_point(corpus):
    base = tiny_config(corpus)
    cfg = run_config(base, "growlength", {"lr": 1e-3}, base.seed + 1, BenchConfig())
    assert cfg.lr == 1e-3
    assert (cfg.schedule, cfg.seed, cfg.eval_seen_lengths, cfg.model) == ("doubling", base.seed + 1, False, "tiny")


def test_a_variant_sets_its_own_keys_on_a_recipe(corpus):
    base = tiny_config(corpus)
    bench_cfg = BenchConfig(runs="fixed-target,growlength,growlength+start_len=32+rope_theta=1e5")
    cfg = run_config(base, "growlength+start_len=32+rope_theta=1e5", {}, 1, bench_cfg)
    assert (cfg.schedule, cfg.start_len, cfg.rope_theta) == ("doubling", 32, "1e5")
    assert run_config(base, "growlength", {}, 1, bench_cfg).start_len == base.start_len
    assert run_config(base, "growlength-auto", {}, 1, bench_cfg).schedule == "auto"
    for bad, why in (("growlength+start_len", "RECIPE\\+KEY=VALUE"), ("growlength+start_ln=3", "start_len")):
        with pytest.raises(GrowLengthError, match=why):
            BenchConfig(runs=f"fixed-target,{bad}")


def test_a_bad_recipe_config_fails_before_any_run(corpus, tmp_path):
    # fixed-target at 192 divides 576 tokens per step; growlength's 128 does not
    base = tiny_config(corpus, target_len=192, tokens_per_step=576)
    with pytest.raises(GrowLengthError, match="bench run growlength: .* at seq_len \\[128\\]"):
        bench(base, BenchConfig(runs="fixed-target,growlength"), tmp_path / "b", show_progress=False)
    assert not (tmp_path / "b").exists()


def test_bench_under_torchrun_is_refused_in_one_line_before_any_work(corpus, tmp_path, monkeypatch, capsys):
    """Under torchrun every rank would run every recipe, prepare the corpus into one cache folder and
    write one report, and each recipe's end would tear down the group the next one needs."""
    from growlength.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "bench"
    args = [
        "bench",
        "--data",
        str(corpus),
        "--model",
        "tiny",
        "--runs",
        "fixed-target,growlength",
        "--out",
        str(out),
    ]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "without torchrun" in error and "one bench per GPU" in error
    assert not out.exists()


def test_provenance_from_a_source_tree_without_the_package_installed(monkeypatch):
    """The device script runs growlength from its source tree on PYTHONPATH, with no installed metadata:
    the bench still records where it came from (the commit), its version as unknown."""
    import importlib.metadata

    from growlength.bench import provenance

    installed = importlib.metadata.version

    def without_growlength(name):
        if name == "growlength":
            raise importlib.metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(importlib.metadata, "version", without_growlength)
    found = provenance()
    assert found["versions"]["growlength"] is None and len(found["git_commit"]) == 40
    assert found["versions"]["torch"] and found["versions"]["python"]
