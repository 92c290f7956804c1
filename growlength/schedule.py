"""Length and learning-rate schedules: pure functions of the fraction of the budget done.

`fraction` is the share of the budget done, in [0, 1]; the budget is counted in optimizer steps,
tokens or wall-clock seconds (`budget.Budget`). Every function here is pure: same fraction, same answer, no
torch and no hidden state, so a resumed run asks the same questions and gets the same answers.

Worked example, doubling from 128 to 1024 over a 4e8-token budget (four equal stages):
    fraction 0.00-0.25 -> 128, 0.25-0.50 -> 256, 0.50-0.75 -> 512, 0.75-1.00 -> 1024
"""

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction

from growlength.buckets import dd_seq_len
from growlength.errors import GrowLengthError
from growlength.recipes import composer_seq_len, composer_seq_len_at, deepspeed_seq_len

SCHEDULES = ("doubling", "linear", "root", "constant", "stages", "deepspeed", "composer", "dd", "auto", "adaptive")
RAMPS = ("linear", "root", "deepspeed", "composer")  # grow in steps of `multiple` rather than in stages


@dataclass(frozen=True, kw_only=True)
class LengthSchedule:
    """seq_len as a function of fraction.

    Stepped schedules (doubling, constant, stages) hold `lengths[i]` until fraction reaches `ends[i]`.
    Ramps (linear, root) grow from start_len to target_len over the first `ramp` of the budget as
    start + (target - start) * (fraction / ramp) ** (1 / degree), rounded down to `multiple`.
    `deepspeed` and `composer` are those peers' own formulas (recipes.py): exact, in their step
    numbering, when the budget is a number of steps (`total_steps`), their continuous form otherwise.
    `dd` is Dataset Decomposition (buckets.py): a power-of-two bucket drawn per step, seeded by the step,
    with odds from the buckets' token `shares` and the Grow-P2 curriculum.
    """

    kind: str
    lengths: tuple[int, ...] = ()
    ends: tuple[float, ...] = ()
    start_len: int = 0
    target_len: int = 0
    ramp: float = 0.0
    multiple: int = 1
    degree: int = 1
    total_steps: int | None = None
    shares: tuple[float, ...] = ()
    seed: int = 0
    stage_tokens: tuple[str, ...] = ()  # `stages` only: each stage's tokens per step: N, xK, or "" (the run's)
    stage_lr: tuple[float, ...] = ()  # `stages` only: each stage's LR multiplier

    def tokens_per_step(self, seq_len: int, default: int) -> int:
        """The tokens of a step at seq_len: its stage's where the stages give them, else `default`."""
        given = self.stage_tokens[self.lengths.index(seq_len)] if self.stage_tokens else ""
        if given.startswith("x"):
            return round(float(given[1:]) * default)
        return int(given) if given else default

    def lr_scale(self, seq_len: int) -> float:
        """The LR multiplier of the stage at seq_len (1 where the stages give none)."""
        return self.stage_lr[self.lengths.index(seq_len)] if self.stage_lr else 1.0

    @property
    def is_ramp(self) -> bool:
        return self.kind in RAMPS

    @property
    def has_stages(self) -> bool:
        """Grows through a few lengths, once each (a change of length is an event worth logging)."""
        return self.kind in ("doubling", "stages", "constant", "adaptive")

    def seq_len_at(self, fraction: float, step: int = 0) -> int:
        """The length at `fraction` (the `step` about to be taken matters only to `dd`'s draw)."""
        if self.kind == "dd":
            return dd_seq_len(fraction, step, seed=self.seed, lengths=self.lengths, shares=list(self.shares))
        if self.kind == "deepspeed":
            return self._deepspeed(fraction)
        if self.kind == "composer":
            return self._composer(fraction)
        if self.is_ramp:
            return ramp_seq_len(fraction, self.start_len, self.target_len, self.ramp, self.multiple, self.degree)
        return stepped_seq_len(fraction, self.lengths, self.ends)

    def _deepspeed(self, fraction: float) -> int:
        lengths = dict(min_len=self.start_len, max_len=self.target_len, difficulty_step=self.multiple)
        if self.ramp <= 0:
            return self.target_len
        if self.total_steps is None:
            return deepspeed_seq_len(fraction, total_curriculum_step=self.ramp, **lengths)
        # fraction = steps done / total; DeepSpeed trains step k + 1 at global_steps + 1 (engine.py)
        steps_done = round(fraction * self.total_steps)
        total = max(1, round(self.ramp * self.total_steps))
        return deepspeed_seq_len(steps_done + 1, total_curriculum_step=total, **lengths)

    def _composer(self, fraction: float) -> int:
        lengths = dict(min_len=self.start_len, max_len=self.target_len, step_size=self.multiple)
        if self.total_steps is None:
            return composer_seq_len_at(fraction, duration=self.ramp, **lengths)
        batch = round(fraction * self.total_steps)
        return composer_seq_len(batch, max_duration_batches=self.total_steps, duration=self.ramp, **lengths)

    def all_lengths(self) -> tuple[int, ...]:
        """Every seq_len this schedule can return, shortest first (for up-front checks)."""
        if self.kind == "composer":  # start, start + step, ... (not multiples of the step)
            return tuple(sorted({*range(self.start_len, self.target_len, self.multiple), self.target_len}))
        if self.kind == "deepspeed":  # multiples of the step from the first at or above start
            first = round_up(self.start_len, self.multiple)
            return tuple(sorted({*range(first, self.target_len, self.multiple), self.target_len}))
        if self.is_ramp:
            inner = range(round_up(self.start_len + 1, self.multiple), self.target_len, self.multiple)
            return tuple(sorted({self.start_len, *inner, self.target_len}))
        return self.lengths

    @property
    def max_len(self) -> int:
        return self.all_lengths()[-1]


def stepped_seq_len(fraction: float, lengths: tuple[int, ...], ends: tuple[float, ...]) -> int:
    """lengths[i] for the first i with fraction < ends[i]; the last length once fraction >= 1."""
    for seq_len, end in zip(lengths, ends):
        if fraction < end:
            return seq_len
    return lengths[-1]


def ramp_seq_len(
    fraction: float, start_len: int, target_len: int, ramp: float, multiple: int, degree: int = 1
) -> int:
    """A ramp from start_len to target_len over `ramp` of the budget, rounded down to `multiple`.

    >>> ramp_seq_len(0.15, 128, 1024, ramp=0.3, multiple=64)  # halfway: 128 + 448 = 576
    576
    """
    if ramp <= 0 or fraction >= ramp:
        return target_len
    grown = (target_len - start_len) * (fraction / ramp) ** (1.0 / degree)
    seq_len = int(start_len + grown) // multiple * multiple
    return min(target_len, max(start_len, seq_len))


def doubling_lengths(start_len: int, target_len: int) -> tuple[int, ...]:
    """start, 2*start, 4*start, ... and finally target: (128, 256, 512, 1024); (128, 256, 384) for 384."""
    lengths = [start_len]
    while lengths[-1] * 2 < target_len:
        lengths.append(lengths[-1] * 2)
    if lengths[-1] != target_len:
        lengths.append(target_len)
    return tuple(lengths)


def dd_lengths(start_len: int, target_len: int) -> tuple[int, ...]:
    """Dataset Decomposition's buckets: every power of two from start_len to target_len (both powers)."""
    for name, value in (("start_len", start_len), ("target_len", target_len)):
        if value < 2 or value & (value - 1):
            raise GrowLengthError(f"schedule dd needs powers of two: {name} is {value}")
    _check_lengths((start_len, target_len), allow_equal=True)
    return doubling_lengths(start_len, target_len)


def parse_stages(text: str) -> tuple[tuple[int, ...], tuple[Fraction, ...]]:
    """'128:0.25,256:0.25,1024:0.5' -> lengths (128, 256, 1024) and exact shares (1/4, 1/4, 1/2)."""
    table = parse_stage_table(text)
    return tuple(row[0] for row in table), tuple(row[1] for row in table)


def parse_stage_table(text: str) -> list[tuple[int, Fraction, str, float]]:
    """Stages as LENGTH:SHARE[:TOKENS_PER_STEP[:LR_MULTIPLIER]], comma-separated: each stage's length,
    its exact share of the budget, its tokens per step (N tokens, or xK: K times the run's
    tokens_per_step; '' or 0: the run's) and its LR multiplier (1: the schedule's LR). Growing the
    batch with the length, as the NanoGPT speedrun does:

    >>> parse_stage_table("1024:0.5:65536,2048:0.25:x3:1.7,4096:0.25")
    [(1024, Fraction(1, 2), '65536', 1.0), (2048, Fraction(1, 4), 'x3', 1.7), (4096, Fraction(1, 4), '', 1.0)]
    """
    table = []
    for item in text.split(","):
        parts = [part.strip() for part in item.split(":")]
        try:
            if not 2 <= len(parts) <= 4:
                raise ValueError
            tokens = parts[2] if len(parts) > 2 and parts[2] not in ("", "0") else ""
            size = float(tokens[1:]) if tokens.startswith("x") else int(tokens or 1)
            lr_mult = float(parts[3]) if len(parts) > 3 else 1.0
            table.append((int(parts[0]), Fraction(parts[1]), tokens, lr_mult))
        except ValueError:
            raise GrowLengthError(
                f"cannot read stage {item.strip()!r} in {text!r}: write LENGTH:SHARE[:TOKENS|xK[:LR]],... "
                "e.g. 128:0.25,256:0.25,1024:0.5 or 1024:0.5:65536,2048:0.5:x2:1.4"
            ) from None
        if not size > 0 or not lr_mult > 0:
            raise GrowLengthError(
                f"stage {item.strip()!r}: tokens per step and the LR multiplier must be positive"
            )
    return table


def plan_stages(tokens_per_s: dict[int, float], *, unit: str, power: float = 1.0) -> str:
    """The `auto` schedule: stages over the measured lengths (the target is the longest), planned from
    what a token costs at each on this machine. Stage L gets a share of the training *time* in proportion
    to r_L ** power, where r_L = tokens_per_s[L] / tokens_per_s[target] is how much cheaper its tokens
    are: a second at L buys r_L target-seconds of tokens, so cheaper lengths get more of the budget
    (power 0: equal time per stage, the paper's doubling). The shares are then written in the budget's
    unit: time shares for a seconds budget; for tokens or steps (constant tokens per step), time x speed.

    Worked example, measured on this CPU (target 2048), power 1, a seconds budget:
        tokens/s {512: 3382, 1024: 3406, 2048: 2635} -> r = 1.28, 1.29, 1.00
            -> '512:0.3589,1024:0.3615,2048:0.2796'
    """
    if unit not in ("seconds", "tokens", "steps"):
        raise GrowLengthError(f"unknown budget unit {unit!r}")
    lengths = sorted(tokens_per_s)
    if not lengths or any(not tokens_per_s[n] > 0 for n in lengths):
        raise GrowLengthError(
            f"the throughput table needs a positive tokens/s at every length, got {tokens_per_s}"
        )
    target_speed = tokens_per_s[lengths[-1]]
    time = {n: (tokens_per_s[n] / target_speed) ** power for n in lengths}
    weight = time if unit == "seconds" else {n: time[n] * tokens_per_s[n] for n in lengths}
    # Shares to 4 decimals that sum to exactly 1: the last (the target's) takes the rounding.
    total = sum(weight.values())
    shares = [Fraction(round(weight[n] / total, 4)).limit_denominator(10**4) for n in lengths[:-1]]
    shares.append(1 - sum(shares, Fraction(0)))
    return ",".join(f"{n}:{float(share):.4f}" for n, share in zip(lengths, shares, strict=True))


def make_schedule(
    kind: str,
    *,
    start_len: int,
    target_len: int,
    stages: str | None = None,
    ramp: float = 0.3,
    multiple: int = 64,
    degree: int = 2,
    total_steps: int | None = None,
    dd_shares: tuple[float, ...] = (),
    seed: int = 0,
) -> LengthSchedule:
    """Build and validate a schedule (`total_steps`: the budget in steps, when it is one; `dd_shares`:
    each bucket's share of the data's tokens, for `dd`). Raises GrowLengthError with the fix."""
    if kind not in SCHEDULES:
        raise GrowLengthError(f"unknown schedule {kind!r}: choose one of {', '.join(SCHEDULES)}")
    if kind == "dd":
        lengths = dd_lengths(start_len, target_len)
        if len(dd_shares) != len(lengths):
            raise GrowLengthError(f"schedule dd needs the share of the data in each of its {len(lengths)} buckets")
        return LengthSchedule(kind="dd", lengths=lengths, shares=tuple(dd_shares), seed=seed)
    if kind in ("auto", "adaptive"):  # the candidates, equal shares until planned (auto) or decided (adaptive)
        lengths = doubling_lengths(start_len, target_len)
        return _stepped(kind, lengths, (Fraction(1, len(lengths)),) * len(lengths))
    if kind == "stages":
        if not stages:
            raise GrowLengthError("schedule 'stages' needs stages, e.g. --stages 128:0.25,256:0.25,1024:0.5")
        table = parse_stage_table(stages)
        schedule = _stepped("stages", tuple(row[0] for row in table), tuple(row[1] for row in table))
        if any(row[2] or row[3] != 1.0 for row in table):
            schedule = dataclasses.replace(
                schedule, stage_tokens=tuple(row[2] for row in table), stage_lr=tuple(row[3] for row in table)
            )
        return schedule
    _check_lengths((start_len, target_len), allow_equal=True)
    if kind == "constant":
        return _stepped("constant", (target_len,), (1.0,))
    if kind == "doubling":
        lengths = doubling_lengths(start_len, target_len)
        return _stepped("doubling", lengths, (Fraction(1, len(lengths)),) * len(lengths))
    if not 0.0 <= ramp <= 1.0:
        raise GrowLengthError(f"ramp must be a fraction of the budget in [0, 1], got {ramp}")
    if multiple < 1:
        raise GrowLengthError(f"multiple must be at least 1, got {multiple}")
    schedule = LengthSchedule(
        kind=kind,
        start_len=start_len,
        target_len=target_len,
        ramp=ramp,
        multiple=multiple,
        degree=degree if kind == "root" else 1,
        total_steps=total_steps if kind in ("deepspeed", "composer") else None,
    )
    schedule.seq_len_at(0.0)  # Composer's own formula raises here for runs it cannot do
    return schedule


def planned_schedule(stages: str) -> LengthSchedule:
    """The `auto` schedule once planned: the stages plan_stages wrote."""
    return _stepped("auto", *parse_stages(stages))


def _stepped(kind: str, lengths: tuple[int, ...], shares: tuple[Fraction, ...]) -> LengthSchedule:
    """Stage i ends at the exact sum of the first i + 1 shares, rounded once to a float: five shares of
    0.2 end at 0.2, 0.4, 0.6, 0.8, 1 (summing floats would put the third end at 0.6000000000000001)."""
    _check_lengths(lengths, allow_equal=False)
    if any(s <= 0 for s in shares) or abs(sum(shares) - 1) > Fraction(1, 10**6):
        raise GrowLengthError(f"stage shares must be positive and sum to 1, got {[float(s) for s in shares]}")
    ends = [float(sum(shares[: i + 1])) for i in range(len(shares) - 1)]
    return LengthSchedule(kind=kind, lengths=lengths, ends=(*ends, 1.0))


def _check_lengths(lengths: tuple[int, ...], *, allow_equal: bool) -> None:
    if any(seq_len < 2 for seq_len in lengths):
        raise GrowLengthError(f"every length must be at least 2 tokens, got {list(lengths)}")
    for a, b in zip(lengths, lengths[1:]):
        if b < a or (b == a and not allow_equal):
            raise GrowLengthError(f"stage lengths must grow, got {list(lengths)}: GrowLength never shrinks")


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is at least `value`."""
    return -(-value // multiple) * multiple


def lr_at(fraction: float, *, lr: float, warmup: float, min_lr_ratio: float) -> float:
    """Linear warmup over the first `warmup` of the budget, then cosine down to lr * min_lr_ratio."""
    if warmup > 0 and fraction < warmup:
        return lr * fraction / warmup
    decay = min(1.0, (fraction - warmup) / max(1e-12, 1.0 - warmup))
    min_lr = lr * min_lr_ratio
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * decay))
