import math

import pytest

from growlength.budget import Budget
from growlength.errors import GrowLengthError
from growlength.schedule import doubling_lengths, lr_at, make_schedule, parse_stages, ramp_seq_len


@pytest.mark.parametrize(
    ("start", "target", "expected"),
    [
        (128, 1024, (128, 256, 512, 1024)),
        (128, 384, (128, 256, 384)),
        (128, 128, (128,)),
        (64, 100, (64, 100)),
        (64, 2048, (64, 128, 256, 512, 1024, 2048)),
    ],
)
def test_doubling_lengths(start, target, expected):
    assert doubling_lengths(start, target) == expected


def test_doubling_schedule_gives_each_stage_an_equal_share():
    schedule = make_schedule("doubling", start_len=128, target_len=1024)
    table = {
        0.0: 128,
        0.2499: 128,
        0.25: 256,
        0.4999: 256,
        0.5: 512,
        0.75: 1024,
        0.999: 1024,
        1.0: 1024,
        1.7: 1024,
    }
    assert {p: schedule.seq_len_at(p) for p in table} == table
    assert schedule.all_lengths() == (128, 256, 512, 1024)


def test_explicit_stages():
    schedule = make_schedule("stages", start_len=1, target_len=1, stages="128:0.5, 256:0.2,1024:0.3")
    assert schedule.lengths == (128, 256, 1024)
    assert schedule.seq_len_at(0.49) == 128
    assert schedule.seq_len_at(0.5) == 256
    assert schedule.seq_len_at(0.69) == 256
    assert schedule.seq_len_at(0.7) == 1024
    assert schedule.max_len == 1024


def test_constant_is_one_stage():
    schedule = make_schedule("constant", start_len=128, target_len=512)
    assert {schedule.seq_len_at(p) for p in (0.0, 0.5, 1.0)} == {512}
    assert schedule.all_lengths() == (512,)


@pytest.mark.parametrize(
    ("progress", "expected"),
    [(0.0, 128), (0.1, 256), (0.25, 576), (0.49, 960), (0.5, 1024), (0.9, 1024)],
)
def test_linear_ramp_table(progress, expected):
    # DeepSpeed fixed_linear: 128 + 896 * progress / 0.5, rounded down to a multiple of 64.
    # 0.1 -> 307.2 -> 256; 0.25 -> 576; 0.49 -> 1006.1 -> 960.
    schedule = make_schedule("linear", start_len=128, target_len=1024, ramp=0.5, multiple=64)
    assert schedule.seq_len_at(progress) == expected


def test_root_ramp_grows_faster_early():
    root = make_schedule("root", start_len=128, target_len=1024, ramp=0.4, multiple=8, degree=2)
    linear = make_schedule("linear", start_len=128, target_len=1024, ramp=0.4, multiple=8)
    # a quarter of the ramp: sqrt(1/4) = 1/2 of the way, so 128 + 448 = 576.
    assert root.seq_len_at(0.1) == 576
    assert linear.seq_len_at(0.1) == 128 + 224
    assert all(root.seq_len_at(p / 100) >= linear.seq_len_at(p / 100) for p in range(101))


def test_zero_ramp_starts_at_target():
    schedule = make_schedule("linear", start_len=128, target_len=1024, ramp=0.0, multiple=64)
    assert schedule.seq_len_at(0.0) == 1024


def test_ramp_as_long_as_the_run_reaches_target_only_at_the_end():
    schedule = make_schedule("linear", start_len=128, target_len=1024, ramp=1.0, multiple=128)
    assert schedule.seq_len_at(0.999) == 896
    assert schedule.seq_len_at(1.0) == 1024


def test_range_not_divisible_by_multiple_stays_in_bounds_and_is_monotone():
    schedule = make_schedule("linear", start_len=100, target_len=1000, ramp=0.8, multiple=64)
    values = [schedule.seq_len_at(p / 1000) for p in range(1001)]
    assert values[0] == 100 and values[-1] == 1000
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert set(values) <= set(schedule.all_lengths())
    assert all(v % 64 == 0 for v in values if v not in (100, 1000))


@pytest.mark.parametrize("kind", ["doubling", "linear", "root", "constant"])
def test_all_lengths_covers_every_value_the_schedule_returns(kind):
    schedule = make_schedule(kind, start_len=96, target_len=800, ramp=0.6, multiple=32)
    seen = {schedule.seq_len_at(p / 997) for p in range(998)}
    assert seen <= set(schedule.all_lengths())
    assert schedule.seq_len_at(1.0) == 800


def test_ramp_seq_len_doc_example():
    assert ramp_seq_len(0.15, 128, 1024, ramp=0.3, multiple=64) == 576


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(kind="stages", stages="256:0.5,128:0.5"), "must grow"),
        (dict(kind="stages", stages="128:0.5,128:0.5"), "must grow"),
        (dict(kind="stages", stages="0:0.5,128:0.5"), "at least 2"),
        (dict(kind="stages", stages="128:0.5,256:0.4"), "sum to 1"),
        (dict(kind="stages", stages="128-0.5"), "LENGTH:SHARE"),
        (dict(kind="stages"), "needs stages"),
        (dict(kind="doubling", start_len=512, target_len=128), "never shrinks"),
        (dict(kind="doubling", start_len=0, target_len=128), "at least 2"),
        (dict(kind="linear", ramp=1.5), "ramp"),
        (dict(kind="cosine"), "unknown schedule"),
    ],
)
def test_bad_schedules_are_refused(kwargs, message):
    kwargs = {"start_len": 128, "target_len": 1024, **kwargs}
    with pytest.raises(GrowLengthError, match=message):
        make_schedule(kwargs.pop("kind"), **kwargs)


def test_parse_stages():
    assert parse_stages("128:0.25,1024:0.75") == ((128, 1024), (0.25, 0.75))


def test_budget_fraction_in_each_unit():
    assert Budget(steps=10).fraction(step=5, tokens=0, seconds=0) == 0.5
    assert Budget(tokens=1000).fraction(step=0, tokens=250, seconds=99) == 0.25
    assert Budget(seconds=60).fraction(step=3, tokens=5, seconds=90) == 1.0  # clamped
    # one step: the first step is at progress 0, and the run is over after it
    assert Budget(steps=1).fraction(step=0, tokens=0, seconds=0) == 0.0
    assert Budget(steps=1).fraction(step=1, tokens=0, seconds=0) == 1.0


@pytest.mark.parametrize("kwargs", [{}, {"steps": 1, "tokens": 5}, {"seconds": 0}, {"tokens": -3}])
def test_bad_budgets(kwargs):
    with pytest.raises(GrowLengthError):
        Budget(**kwargs)


def test_lr_warmup_then_cosine():
    kw = dict(lr=1.0, warmup=0.1, min_lr_ratio=0.1)
    assert lr_at(0.0, **kw) == 0.0
    assert lr_at(0.05, **kw) == pytest.approx(0.5)
    assert lr_at(0.1, **kw) == pytest.approx(1.0)
    assert lr_at(0.55, **kw) == pytest.approx(0.55)  # halfway down the cosine: (1 + 0.1) / 2
    assert lr_at(1.0, **kw) == pytest.approx(0.1)
    after = [lr_at(0.1 + 0.9 * i / 100, **kw) for i in range(101)]
    assert all(a >= b for a, b in zip(after, after[1:]))


def test_lr_without_warmup_starts_at_peak():
    assert lr_at(0.0, lr=3e-4, warmup=0.0, min_lr_ratio=0.0) == pytest.approx(3e-4)
    assert math.isclose(lr_at(1.0, lr=3e-4, warmup=0.0, min_lr_ratio=0.0), 0.0, abs_tol=1e-12)


@pytest.mark.parametrize(("n_stages", "steps"), [(5, 10), (5, 25), (6, 12), (6, 18), (3, 9)])
def test_stages_split_a_step_budget_exactly(n_stages, steps):
    # five shares of 0.2 summed as floats end the third stage at 0.6000000000000001: 10 steps went 2/2/3/1/2
    lengths = [64 * 2**i for i in range(n_stages)]
    text = ",".join(f"{n}:{1 / n_stages:.10g}" if n_stages != 6 else f"{n}:1/6" for n in lengths)
    schedule = make_schedule("stages", start_len=1, target_len=1, stages=text)
    per_stage = [sum(schedule.seq_len_at(k / steps) == n for k in range(steps)) for n in lengths]
    assert per_stage == [steps // n_stages] * n_stages
    doubling = make_schedule("doubling", start_len=64, target_len=lengths[-1])
    assert [sum(doubling.seq_len_at(k / steps) == n for k in range(steps)) for n in lengths] == per_stage


def test_auto_plans_time_shares_from_how_much_cheaper_each_length_is():
    from growlength.schedule import parse_stages, plan_stages

    measured = {512: 3382.0, 1024: 3406.0, 2048: 2635.0}  # this CPU, target 2048
    assert plan_stages(measured, unit="seconds") == "512:0.3589,1024:0.3615,2048:0.2796"
    assert plan_stages(measured, unit="seconds", power=0) == "512:0.3333,1024:0.3333,2048:0.3334"
    # under a token (or step) budget the same time shares, written as token shares: time x speed
    by_tokens = plan_stages(measured, unit="tokens")
    assert by_tokens == plan_stages(measured, unit="steps") == "512:0.3815,1024:0.3869,2048:0.2316"
    # every plan is a valid stages schedule whose shares sum to exactly 1
    for text in (by_tokens, plan_stages({128: 9e3, 8192: 1e3}, unit="seconds", power=2)):
        lengths, shares = parse_stages(text)
        assert sum(shares) == 1 and all(s > 0 for s in shares)
    # where every length costs the same, every stage gets the same time: no length is favoured
    flat = plan_stages({64: 5.0, 128: 5.0, 256: 5.0, 512: 5.0}, unit="seconds")
    assert flat == "64:0.2500,128:0.2500,256:0.2500,512:0.2500"
    # one length: all of it
    assert plan_stages({1024: 7.0}, unit="tokens") == "1024:1.0000"
    with pytest.raises(GrowLengthError, match="positive tokens/s"):
        plan_stages({128: 0.0, 256: 1.0}, unit="seconds")


def test_stages_may_grow_the_batch_and_scale_the_lr_with_the_length():
    schedule = make_schedule(
        "stages", start_len=0, target_len=256, stages="64:0.25,128:0.25:4096,256:0.5:8192:1.5"
    )
    assert [schedule.tokens_per_step(n, 2048) for n in (64, 128, 256)] == [2048, 4096, 8192]
    assert [schedule.lr_scale(n) for n in (64, 128, 256)] == [1.0, 1.0, 1.5]
    plain = make_schedule("stages", start_len=0, target_len=256, stages="64:0.5,256:0.5")
    assert plain.tokens_per_step(64, 2048) == 2048 and plain.lr_scale(256) == 1.0 and not plain.stage_tokens


@pytest.mark.parametrize(
    "stages",
    [
        "64:0.5:x,256:0.5",
        "64:0.5:1:2:3,256:0.5",
        "64:0.5:-8,256:0.5",
        "64:0.5:0:0,256:0.5",
        "64:0.5:xq,256:0.5",
        "64:0.5:x0,256:0.5",
    ],
)
def test_bad_stage_batches_fail_with_the_syntax(stages):
    with pytest.raises(GrowLengthError, match="stage"):
        make_schedule("stages", start_len=0, target_len=256, stages=stages)
