"""The arena's report as a pure function of records: table tests on synthetic runs, no training."""

import math

import pytest

from growlength.report import format_sweep, format_table, headline, versus


def run(wall_s, val_loss, tokens=None, **extra):
    """A run as report.read_run gives it: its evaluations' times, tokens and losses, and its totals."""
    tokens = tokens or [int(1000 * s) for s in wall_s]
    return {
        "wall_s": wall_s,
        "tokens": tokens,
        "val_loss": val_loss,
        "data_tokens": tokens[-1],
        "steps": 10,
        "longest_step_s": 1.0,
        "tokens_per_s_by_len": {64: [100.0, 120.0], 256: [50.0]},
        "compile_s": 0.0,
        "compiles": 0,
        "final_by_len": {64: val_loss[-1] + 0.1, 256: val_loss[-1]},
        **extra,
    }


BASE = [run([0, 10, 20], [6.0, 5.0, 4.0]), run([0, 10, 20], [6.0, 5.2, 4.2])]


@pytest.mark.parametrize(
    ("curves", "speedup_each", "brackets"),
    [
        # seed 1 crosses its baseline's 4.0 halfway between the evaluations at 5 s (4.5) and 10 s (3.5): at
        # 7.5 s, so 20 / 7.5; seed 2 reaches its baseline's 4.2 at the evaluation at 10 s: 20 / 10
        (
            [([0, 5, 10, 20], [6.0, 4.5, 3.5, 3.0]), ([0, 5, 10, 20], [6.0, 4.7, 4.2, 3.0])],
            [2.6667, 2.0],
            [(2.0, 4.0), (2.0, 4.0)],
        ),
        # seed 1 never reaches its baseline's final loss: no speedup, and no mean; seed 2 at 18 s
        ([([0, 10, 20], [6.0, 5.0, 4.1]), ([0, 10, 20], [6.0, 5.0, 4.0])], [None, 1.1111], [None, (1.0, 2.0)]),
    ],
)
def test_versus_finds_each_seeds_crossing_of_the_baselines_final_loss(curves, speedup_each, brackets):
    reps = [run(xs, losses) for xs, losses in curves]
    result = versus(BASE, reps)
    got = [None if s is None else round(s["at"], 4) for s in result["speedup_each"]]
    assert got == speedup_each
    for s, bracket in zip(result["speedup_each"], brackets, strict=True):
        assert (None if s is None else (s["low"], s["high"])) == (
            None if bracket is None else pytest.approx(bracket)
        )
    assert result["speedup"] == (None if None in speedup_each else pytest.approx(sum(speedup_each) / 2, abs=1e-4))
    assert result["final_val_loss"] == pytest.approx(sum(losses[-1] for _, losses in curves) / 2)
    assert result["tokens_per_s_by_len"] == {"64": 110.0, "256": 50.0}  # the median of every step at each length


def test_a_crossing_at_the_first_evaluation_after_the_start_has_no_upper_bound():
    result = versus(BASE[:1], [run([0, 5, 20], [6.0, 3.0, 2.0])])
    (speedup,) = result["speedup_each"]
    assert speedup["high"] is None and speedup["low"] == pytest.approx(20 / 5)


def report_of(runs, sweep=None):
    return {"target_len": 256, "baseline": "fixed-target", "runs": runs, "sweep": sweep}


def test_table_and_headline_say_what_was_measured_and_crashes_are_rows():
    base = {"setting": {"lr": 0.002}, **versus(BASE, BASE)}
    mine = {"setting": {"lr": 0.004}, **versus(BASE, [run([0, 5, 10, 20], [6.0, 4.5, 3.5, 3.0])] * 2)}
    runs = {"fixed-target": base, "growlength": mine, "composer": {"crash": "ZeroDivisionError: in its hook"}}
    table = format_table(report_of(runs)).splitlines()
    assert table[0].startswith("| run | setting | val loss @256 |") and len(table) == 2 + 3
    assert table[3].startswith("| growlength | lr=0.004 | 3.0000 | -1.1000 |")
    # seeds 20 / 7.5 and 20 / 6.5 (seed 2's baseline ends at 4.2), both between the evaluations at 5 and 10 s
    assert "| 2.87x [2.00-4.00] |" in table[3] and "| 1.00x [1.00-2.00] |" in table[2]
    assert "crashes in the peer's own code: ZeroDivisionError" in table[4]
    assert headline(report_of(runs)).startswith(
        "growlength reaches the tuned fixed-length baseline's final val loss 2.87x"
    )
    assert headline(report_of({"fixed-target": base})) == "no growlength run in this bench"
    tuned = headline(report_of({"fixed-target": base, "growlength+lr=0.008": mine}))
    assert tuned.startswith("growlength reaches the tuned fixed-length baseline's final val loss 2.87x")


def test_the_sweep_table_bolds_each_recipes_best_point():
    sweep = {
        "fixed-target": [
            {"setting": {"lr": 1}, "final_val_loss": 4.2},
            {"setting": {"lr": 2}, "final_val_loss": 4.1},
        ],
        "composer": [{"setting": {"lr": 1}, "crash": "x"}, {"setting": {"lr": 2}, "final_val_loss": 4.3}],
    }
    lines = format_sweep(report_of({}, sweep)).splitlines()
    assert lines == [
        "| run | lr=1 | lr=2 |",
        "|---|---|---|",
        "| fixed-target | 4.2000 | **4.1000** |",
        "| composer | crash | **4.3000** |",
    ]
    assert format_sweep(report_of({})) == ""


def test_a_speedup_splits_into_learning_times_cheaper_tokens():
    """A recipe twice as fast per token that needs half the tokens: 2 x 2 = 4. Seed 1 crosses the baseline's
    4.0 at 5 s and at 10,000 tokens (the baseline took 20 s and 20,000 tokens): learning 2x, cheaper 2x."""
    fast = run([0, 5, 10], [6.0, 4.0, 3.0], tokens=[0, 10_000, 20_000])
    slow = run([0, 10, 20], [6.0, 4.2, 3.0], tokens=[0, 5_000, 10_000])  # tokens cost the same, learns 4x
    result = versus(BASE, [fast, slow])
    assert [round(s["at"], 4) for s in result["speedup_each"]] == [4.0, 2.0]
    assert [round(g["at"], 4) for g in result["token_gain_each"]] == [2.0, 4.0]
    assert [round(c, 4) for c in result["cheaper_tokens_each"]] == [2.0, 0.5]
    assert result["tokens_vs_baseline_each"] == [1.0, 0.5]
    for s, g, c in zip(
        result["speedup_each"], result["token_gain_each"], result["cheaper_tokens_each"], strict=True
    ):
        assert s["at"] == pytest.approx(g["at"] * c)


def test_the_ceiling_is_the_fastest_lengths_tokens_per_s_over_the_targets():
    from growlength.report import ceiling

    runs = {
        "fixed-target": {"tokens_per_s_by_len": {"256": 100.0}, "steps_by_len": {"256": 9}},
        "growlength": {
            "tokens_per_s_by_len": {"32": 900.0, "64": 150.0, "128": 180.0, "256": 110.0, "512": 400.0},
            "steps_by_len": {"32": 1, "64": 5, "128": 6, "256": 6, "512": 6},
        },
        "ramp": {"tokens_per_s_by_len": {"128": 999.0, "40": 999.0}, "steps_by_len": {"128": 4, "40": 4}},
    }
    limit = ceiling(runs, 256)
    # 32 (one step) and the ramp's 40 and 128 (four each, over all its seeds) are too few to trust;
    # 128 is growlength's alone; 512 is past the target; median of 100 and 110 at 256
    assert limit["fastest_len"] == 128 and limit["speedup"] == pytest.approx(180 / 105)
    assert limit["tokens_per_s_by_len"] == {"64": 150.0, "128": 180.0, "256": 105.0}
    assert ceiling({"x": {"tokens_per_s_by_len": {"64": 1.0}, "steps_by_len": {"64": 9}}}, 256) is None
    no_counts = {n: {"tokens_per_s_by_len": r["tokens_per_s_by_len"]} for n, r in runs.items()}
    assert ceiling(no_counts, 256) is None  # steps unknown: no length is vouched for


def test_positions_table_averages_each_bucket_over_the_seeds():
    from growlength.report import format_positions

    def with_positions(low, high):
        buckets = [{"positions": [1, 64], "loss": low}, {"positions": [65, 512], "loss": high}]
        return run([0, 10, 20], [6.0, 5.0, 4.0], final_by_position={512: buckets})

    base = {"setting": {}, **versus(BASE, [with_positions(5.0, 4.0), with_positions(5.2, 4.4)])}
    assert base["val_loss_by_position"]["512"][1]["loss"] == pytest.approx(4.2)
    table = format_positions(report_of({"fixed-target": base})).splitlines()
    assert table[0] == "| run (loss by position at 512) | 1-64 | 65-512 |"
    assert table[2] == "| fixed-target | 5.1000 | 4.2000 |"
    assert format_positions(report_of({"fixed-target": {"setting": {}, **versus(BASE, BASE)}})) == ""


def test_jumps_table_averages_each_change_over_the_seeds():
    from growlength.report import format_jumps

    def with_jumps(*jumps):
        changes = [{"seq_len": n, "step": 10 * i, "loss_jump": j, "jump_k": j} for i, (n, j) in enumerate(jumps)]
        return run([0, 10, 20], [6.0, 5.0, 4.0], stage_jumps=changes)

    mine = {
        "setting": {},
        **versus(BASE, [with_jumps((128, 0.2), (256, -0.1)), with_jumps((128, 0.4), (256, 0.1))]),
    }
    table = format_jumps(report_of({"fixed-target": {"setting": {}, **versus(BASE, BASE)}, "growlength": mine}))
    assert table.splitlines()[0] == "| run (loss jump at the change to) | 128 | 256 | sum |"
    assert table.splitlines()[2] == "| growlength | +0.300 | +0.000 | +0.300 |"
    assert len(table.splitlines()) == 3  # the baseline changes no length: no row


def test_a_runs_recipe_drops_only_its_tuning():
    from growlength.report import recipe_of

    assert recipe_of("growlength+lr=0.004") == "growlength"
    assert recipe_of("fixed-target+lr=0.002+tokens_per_step=8192") == "fixed-target"
    assert recipe_of("growlength+rope_theta=100000+lr=0.004") == "growlength+rope_theta=100000"


def test_scale_rows_put_each_bench_at_its_tokens_per_parameter():
    from growlength.report import format_scale, scale_rows

    def bench_report(params, seconds, reps, name="growlength+lr=0.008"):
        runs = {
            "fixed-target+lr=0.004": {"setting": {}, **versus(BASE, BASE)},
            name: {"setting": {}, **versus(BASE, reps)},
        }
        return {
            "model": "tiny",
            "params": params,
            "budget": {"seconds": seconds},
            "baseline": "fixed-target",
            "runs": runs,
        }

    fast = [run([0, 5, 10, 20], [6.0, 4.5, 3.5, 3.0])] * 2
    rows = scale_rows([bench_report(2000, 240, fast), bench_report(4000, 60, BASE)])
    assert [(r["params"], r["recipe"]) for r in rows] == [
        (2000, "fixed-target"),
        (2000, "growlength"),
        (4000, "fixed-target"),
        (4000, "growlength"),
    ]
    assert rows[0]["tokens_per_param"] == pytest.approx(20_000 / 2000)  # the baseline's tokens over the parameters
    assert rows[1]["speedup"] == pytest.approx(versus(BASE, fast)["speedup"]) and rows[1]["final_gap"] < 0
    # the same model on another corpus is another ladder, named apart; one corpus keeps the bare name
    other = {**bench_report(2000, 60, BASE), "config": {"data": "runs/data-linux"}}
    models = {r["model"] for r in scale_rows([bench_report(2000, 240, fast), other])}
    assert models == {"tiny on shakespeare", "tiny on data-linux"}
    assert {r["model"] for r in rows} == {"tiny"}
    table = format_scale(rows).splitlines()
    assert (
        len(table) == 2 + 4
        and "| tiny (0.00M) | 240 s | 10.0 | growlength | 2.87x [2.00-4.00] (2.67, 3.08) |" in table[3]
    )


def test_the_trend_joins_each_models_rungs_and_carries_the_last_two_on_as_a_prediction():
    from growlength.report import format_trend, scale_trend

    def row(recipe, tpp, gap, speedup, model="tiny"):
        fields = {"model": model, "recipe": recipe, "baseline": recipe == "fixed-target", "tokens_per_param": tpp}
        return {**fields, "final_gap": gap, "speedup": speedup}

    rows = [row("fixed-target", t, 0.0, 1.0) for t in (1, 10, 100)]
    rows += [row("growlength", 1, -0.1, 2.0), row("growlength", 10, -0.2, 4.0), row("growlength", 100, -0.3, 8.0)]
    rows += [row("skyladder", 1, -0.2, 2.0), row("skyladder", 10, -0.1, 3.0), row("skyladder", 100, 0.1, None)]
    rows += [row("composer", 10, -0.1, 2.0)]
    rows += [row("dd", 1, 0.0, 2.0), row("dd", 10, 0.0, 2.0), row("dd", 100, 0.3, 2.0), row("dd", 100, 0.1, 2.0)]
    rows += [row("growlength", 5, -0.5, 1.5, model="small")]  # one rung of another size: no line
    rows += [row("late", 1, 0.1, None), row("late", 10, 0.02, None)]  # closing in, never reached: no speed line
    trends = {t["recipe"]: t for t in scale_trend(rows)}
    assert set(trends) == {"growlength", "skyladder", "dd", "late"}  # not the baseline, not one rung
    assert trends["late"]["speedup_at"] is None and trends["late"]["gap_at"]["1000"] < 0
    del trends["late"]
    grow = trends["growlength"]
    assert grow["gap_per_decade"] == pytest.approx(-0.1) and grow["measured"] == [1, 100]
    assert grow["gap_at"]["20"] == pytest.approx(-0.1 - 0.1 * math.log10(20))
    assert grow["gap_at"]["1000"] == pytest.approx(-0.4)
    assert grow["speedup_at"]["1000"] == pytest.approx(16.0)
    # a bend: read between the rungs around it, beyond on the last two (the two rows at 100 averaged)
    dd = trends["dd"]
    assert dd["rungs"] == 3 and dd["gap_per_decade"] == pytest.approx(0.2)
    assert dd["gap_at"]["20"] == pytest.approx(0.2 * math.log10(2)) and dd["gap_at"]["1000"] == pytest.approx(0.4)
    sky = trends["skyladder"]  # never reached the baseline at 100: its speedup line ends at 10
    assert sky["gap_per_decade"] == pytest.approx(0.2) and sky["speedup_at"]["20"] > 3.0
    table = format_trend(list(trends.values())).splitlines()
    assert table[0].startswith(
        "| model | recipe | rungs (tokens/param) | gap per 10x tokens (last two rungs) | gap at 20 |"
    )
    assert "| tiny | growlength | 3 (1.0–100.0) | -0.100 | -0.230 | -0.300 | -0.400 predicted |" in table[2]
    assert table[2].endswith("| 16.00x predicted |")
    # skyladder: the gap at 20 lies between its rungs, the speedup at 20 beyond the last it reached
    row = "| tiny | skyladder | 3 (1.0–100.0) | +0.200 | -0.040 | +0.100 | +0.300 predicted | 3.39x predicted |"
    # ... and where its gap is above 0 it ends above the baseline's loss: never reached, whatever a line says
    assert sky["speedup_at"]["100"] is None and sky["speedup_at"]["1000"] is None
    assert table[3].startswith(row) and table[3].endswith("| not reached | not reached predicted |")
