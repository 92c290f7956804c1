"""--schedule adaptive: the rule as a pure function of the history (no model), then a run and its resume."""

import math

import pytest

from growlength.adaptive import StageWatch, advance, decide, falling_rate, observe
from growlength.errors import GrowLengthError

LENGTHS = (64, 128, 256, 512)


def replay(loss_at, *, speed_ratio=0.8, floor=0.5, ceiling=2.0, steps=4000):
    """A run of `steps` equal steps (1 s each) whose loss at fraction f of the stage's own progress is
    loss_at(stage, time in the stage); returns the fractions at which the stages ended."""
    watch, window = StageWatch(), floor / len(LENGTHS) / 2
    for step in range(1, steps + 1):
        fraction = step / steps
        observe(watch, fraction, float(step), loss_at(watch.stage, step - watch.started * steps), window=window)
        bounds = dict(n_stages=len(LENGTHS), speed_ratio=speed_ratio, floor=floor, ceiling=ceiling, step=1 / steps)
        while watch.stage + 1 < len(LENGTHS) and (reason := decide(watch, fraction, **bounds)):
            advance(watch, fraction, reason, LENGTHS)
    return [d["fraction"] for d in watch.decisions], watch


def shares(ends):
    edges = [0.0, *ends, 1.0]
    return [b - a for a, b in zip(edges, edges[1:], strict=False)]


def test_a_loss_that_keeps_falling_fast_holds_each_length_to_its_ceiling_and_still_reaches_the_target():
    ends, watch = replay(lambda stage, t: 10.0 - 0.002 * t)  # never slows down: every stage pays
    assert watch.stage == len(LENGTHS) - 1
    # each up to its ceiling (0.5) or until the later lengths need their floors (0.125 each)
    assert shares(ends) == pytest.approx([0.5, 0.25, 0.125, 0.125], abs=1e-3)
    reasons = [d["reason"].split(":")[0] for d in watch.decisions]
    assert reasons == ["its ceiling", "the later lengths' floors", "the later lengths' floors"]


@pytest.mark.parametrize("steps", [4, 5, 7, 12])
def test_a_run_of_fewer_steps_than_its_floors_need_still_trains_its_last_step_at_the_target(steps):
    """Floors of 1.25 steps or less (4 lengths, floor 0.5, 4-12 steps): each change a step ahead, and a
    length whose time has passed skipped, so the run's last step is at the target."""
    ends, watch = replay(lambda stage, t: 10.0 - 0.002 * t, steps=steps)
    assert watch.stage == len(LENGTHS) - 1 and ends[-1] <= 1 - 1 / steps + 1e-6  # decisions keep 6 decimals
    assert [(d["from"], d["to"]) for d in watch.decisions] == list(zip(LENGTHS, LENGTHS[1:]))  # in order


def test_a_loss_that_flattens_moves_on_at_the_floor():
    ends, watch = replay(lambda stage, t: 5.0 + 3.0 * math.exp(-t / 20.0))  # flat within each stage's first window
    assert shares(ends)[:3] == pytest.approx([0.125, 0.125, 0.125], abs=2e-3)
    assert all("stopped paying" in d["reason"] for d in watch.decisions)


def test_a_stage_ends_when_its_rate_falls_below_the_speed_ratio_times_its_opening_rate():
    """Rate r(t) = r0 exp(-t / tau) (loss falling ever slower): the stage should end once r < ratio x r0,
    i.e. at t = tau ln(1 / ratio) into it, past its floor."""
    tau, ratio = 600.0, 0.5
    ends, _ = replay(lambda stage, t: 10.0 - tau * 0.01 * (1 - math.exp(-t / tau)), speed_ratio=ratio, floor=0.2)
    window = 0.2 / 4 / 2 * 4000  # steps
    # the two windows' slopes are centred half a window from their ends: the opening one at window / 2 into
    # the stage, the last at t - window / 2; so the crossing is at tau ln(1 / ratio) + window (516 s)
    assert ends[0] * 4000 == pytest.approx(tau * math.log(1 / ratio) + window, abs=3)
    assert all(0.2 / 4 - 1e-3 <= s <= 2.0 / 4 + 1e-3 for s in shares(ends)[:3])


def test_the_falling_rate_is_a_least_squares_slope():
    assert falling_rate([(0, 0.0, 3.0), (0, 1.0, 1.0), (0, 2.0, 2.0), (0, 3.0, 0.0)]) == pytest.approx(0.8)
    assert falling_rate([(0, 1.0, 3.0), (0, 1.0, 2.0), (0, 1.0, 1.0)]) is None
    assert falling_rate([(0, 1.0, 3.0)]) is None


@pytest.mark.parametrize(("floor", "ceiling"), [(0.0, 2.0), (1.5, 2.0), (0.5, 0.9)])
def test_bad_bounds_fail_at_load(floor, ceiling):
    from growlength.config import TrainConfig

    with pytest.raises(GrowLengthError, match="adaptive_floor"):
        TrainConfig(schedule="adaptive", adaptive_floor=floor, adaptive_ceiling=ceiling)


def test_an_adaptive_run_logs_each_decision_and_a_resume_takes_the_same_ones(corpus, tmp_path):
    import json

    from conftest import cut_back, tiny_config

    from growlength.train import train

    cfg = tiny_config(corpus, schedule="adaptive", budget_steps=40, evals=2, eval_tokens=1024, checkpoint_every=15)
    whole = tmp_path / "whole"
    train(cfg, whole, show_progress=False)
    steps = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    lengths = [r["seq_len"] for r in steps]
    assert lengths[-1] == 256 and lengths == sorted(lengths)  # reached the target, never shrank
    changes = [i for i in range(1, len(steps)) if lengths[i] != lengths[i - 1]]
    decided = [i for i, r in enumerate(steps) if "stage_decision" in r]
    assert [i + 1 for i in decided] == changes  # a decision after step i: step i + 1 at the next length
    shares = [n / 40 for n in (changes[0], changes[1] - changes[0], 40 - changes[1])]
    assert all(0.5 / 3 - 1e-9 <= s <= 2.0 / 3 + 1 / 40 for s in shares)  # within the floor and ceiling
    cut = cut_back(whole, tmp_path / "cut", 15)
    train(None, cut, resume=True, show_progress=False)
    again = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [(r["seq_len"], r["loss"]) for r in again if "loss" in r] == [(r["seq_len"], r["loss"]) for r in steps]


def test_an_adaptive_run_of_four_steps_trains_its_last_at_the_target(corpus, tmp_path):
    """Three lengths, floors of 2/3 of a step: without the step ahead the run ended at 128."""
    import json

    from conftest import tiny_config

    from growlength.train import train

    cfg = tiny_config(corpus, schedule="adaptive", budget_steps=4, evals=1, eval_tokens=1024)
    train(cfg, tmp_path / "run", show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["seq_len"] for r in records if "loss" in r] == [64, 64, 128, 256]


def test_a_first_window_of_fewer_than_three_steps_still_measures_the_opening_rate():
    watch = StageWatch()
    for step, loss in enumerate([5.0, 4.0, 3.0, 2.9], 1):  # the window ends at 0.1: one step in it
        observe(watch, step / 10, float(step), loss, window=0.1)
    assert watch.opening_rate == pytest.approx(1.0)  # from the stage's first three steps
    assert len(watch.points) <= 2  # trimmed to the last window once it is known
