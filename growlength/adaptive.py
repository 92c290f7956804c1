"""`--schedule adaptive`: the doubling grid's lengths, each change made when the current length stops
paying (the paper's first open direction: schedules that follow the model's progress). Pure: every
decision is a function of the logged history, which the checkpoint holds, so a resumed run takes the
same decisions.

The rule. A length pays while the smoothed train loss falls fast enough per second. The rate at which it
falls over the stage's first window is its opening rate r0; the rate over the last window is r. Moving
on costs tokens/s: the next length's tokens are `speed_ratio` (usually < 1; near 1 between short lengths,
where a step's fixed costs dominate) times as many per second. Assuming
a new length opens at the rate this one opened at (new contexts to learn from) and pays for it only in
speed, the next length would give about speed_ratio x r0 per second; so the stage ends when

    r < speed_ratio x r0          (or the loss stopped falling: r <= 0)

Each stage before the target's takes a share of the budget within [floor, ceiling] x 1/n (n lengths),
and ends in time (a step ahead) for every later one to get its floor, so a run always reaches the
target before its end; the target's stage never ends and takes what remains. In a run of so few steps
that a floor is under one step, a length whose time has passed is skipped (logged as a change at a
share of 0). A rate
is the least-squares slope of loss against seconds over the steps of a window (half the floor share of
the budget), which averages out step-to-step noise.

Worked example, four lengths, floor 0.5 and ceiling 2 (shares 0.125 .. 0.5 of the budget), window
0.0625: stage 0 opened at r0 = 0.02 loss/s; at fraction 0.2 its last window falls at 0.011 loss/s and
the next length's tokens/s is 0.6 of this one's: 0.011 < 0.6 x 0.02 = 0.012, so it ends at 0.2.
"""

from dataclasses import asdict, dataclass, field

from growlength.errors import GrowLengthError


@dataclass
class StageWatch:
    """What the rule needs of the run so far (saved in every checkpoint, in the run's progress)."""

    stage: int = 0  # index into the lengths
    started: float = 0.0  # the fraction of the budget at which the stage started
    opening_rate: float | None = None  # loss per second over the stage's first window, once known
    points: list[tuple[float, float, float]] = field(default_factory=list)  # (fraction, seconds, loss)
    decisions: list[dict] = field(default_factory=list)  # every change: when, why, the rates

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "StageWatch":
        values = dict(values)
        values["points"] = [tuple(p) for p in values.get("points", [])]
        return cls(**values)


def check_bounds(floor: float, ceiling: float) -> None:
    if not 0 < floor <= 1 <= ceiling:
        raise GrowLengthError(
            f"adaptive stage shares need 0 < adaptive_floor <= 1 <= adaptive_ceiling, got {floor} and {ceiling}"
        )


def falling_rate(points: list[tuple[float, float, float]]) -> float | None:
    """How fast the loss falls, per second: minus the least-squares slope of loss against seconds
    (None with fewer than 3 points or no time between them).

    >>> falling_rate([(0.0, 0.0, 5.0), (0.1, 1.0, 4.0), (0.2, 2.0, 3.0)])
    1.0
    """
    if len(points) < 3:
        return None
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var <= 0:
        return None
    return -sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def observe(watch: StageWatch, fraction: float, seconds: float, loss: float, *, window: float) -> None:
    """Add a step's loss; fix the opening rate once the stage's first window is over (its first 3 steps
    if the window held fewer: a slope needs 3); keep only the last window's points after that (the
    history stays bounded)."""
    watch.points.append((fraction, seconds, loss))
    if watch.opening_rate is None and fraction >= watch.started + window:
        first = [p for p in watch.points if p[0] <= watch.started + window]
        watch.opening_rate = falling_rate(first if len(first) >= 3 else watch.points[:3])
    if watch.opening_rate is not None:
        watch.points = [p for p in watch.points if p[0] >= fraction - window]


def decide(
    watch: StageWatch,
    fraction: float,
    *,
    n_stages: int,
    speed_ratio: float,
    floor: float,
    ceiling: float,
    step: float = 0.0,
) -> str | None:
    """Whether the current stage ends now: the reason if so, else None. The last stage never ends.
    `step` is the share of the budget a step takes (the last one's): the floors are kept a step ahead,
    so a later length never starts too late for its floor, and a run of few steps still trains at the
    target. Called again after a change, at a share of 0, it ends that stage too (the length is skipped)
    where the later lengths' floors leave it no time."""
    remaining = n_stages - 1 - watch.stage  # lengths after this one
    if remaining == 0:
        return None
    share = fraction - watch.started
    equal = 1.0 / n_stages
    if fraction >= watch.started + ceiling * equal - 1e-12:
        return f"its ceiling: {share:.3f} of the budget, the most a length may take"
    if fraction + step >= 1.0 - remaining * floor * equal - 1e-12:
        return f"the later lengths' floors: {share:.3f} of the budget leaves {remaining} lengths their floor"
    if share < floor * equal or watch.opening_rate is None:
        return None
    rate = falling_rate(watch.points)
    if rate is None:
        return None
    bar = speed_ratio * watch.opening_rate
    if rate < bar:
        return (
            f"it stopped paying: the loss falls {rate:.3g}/s, below {speed_ratio:.2f} (the next length's "
            f"tokens/s over this one's) x its opening {watch.opening_rate:.3g}/s = {bar:.3g}/s"
        )
    return None


def advance(watch: StageWatch, fraction: float, reason: str, lengths: tuple[int, ...]) -> dict:
    """Start the next stage at `fraction`; the decision, for the log and the record."""
    decision = {"fraction": round(fraction, 6), "from": lengths[watch.stage], "to": lengths[watch.stage + 1]}
    decision["reason"] = reason
    watch.decisions.append(decision)
    watch.stage += 1
    watch.started, watch.opening_rate, watch.points = fraction, None, []
    return decision
