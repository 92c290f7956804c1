"""Token accounting: how many sequences one optimizer step holds at a given length, and how they split.

The GrowLength default keeps tokens per optimizer step constant across stages, so a step at 128 tokens
holds 8x the rows of a step at 1024 and every step moves the model by the same amount of data:

    tokens_per_step=8192:  seq_len 128 -> 64 rows,  seq_len 1024 -> 8 rows

The truncation-style baseline (`constant='rows'`) holds rows fixed instead (rows = tokens_per_step /
target_len), so a step at 128 tokens sees 1/8 of the data a step at 1024 does.
"""

import math
from dataclasses import dataclass

from growlength.errors import GrowLengthError

CONSTANTS = ("tokens", "rows")


@dataclass(frozen=True)
class StepShape:
    """One optimizer step: `rows` sequences of `seq_len` over all ranks; each rank runs `accum`
    micro-batches of `micro_rows` sequences."""

    seq_len: int
    rows: int
    micro_rows: int
    accum: int

    @property
    def tokens(self) -> int:
        return self.rows * self.seq_len


def step_shape(
    seq_len: int,
    *,
    tokens_per_step: int,
    target_len: int,
    micro_batch_tokens: int,
    world_size: int = 1,
    constant: str = "tokens",
) -> StepShape:
    """The shape of a step at `seq_len`. Raises GrowLengthError when the numbers do not divide."""
    if constant not in CONSTANTS:
        raise GrowLengthError(f"constant must be one of {CONSTANTS}, got {constant!r}")
    per_step_len = seq_len if constant == "tokens" else target_len
    if tokens_per_step % per_step_len:
        raise GrowLengthError(
            f"tokens_per_step {tokens_per_step} is not divisible by seq_len {per_step_len}: "
            f"use a multiple of {per_step_len} (e.g. {_round_up(tokens_per_step, per_step_len)})"
        )
    rows = tokens_per_step // per_step_len
    if rows % world_size:
        raise GrowLengthError(
            f"{rows} rows per step at seq_len {seq_len} do not split over {world_size} ranks: "
            f"make tokens_per_step a multiple of {per_step_len * world_size}"
        )
    rank_rows = rows // world_size
    micro_rows = _largest_divisor_at_most(rank_rows, max(1, micro_batch_tokens // seq_len))
    return StepShape(seq_len=seq_len, rows=rows, micro_rows=micro_rows, accum=rank_rows // micro_rows)


def check_lengths(lengths: tuple[int, ...], **shape_kwargs) -> list[StepShape]:
    """step_shape for every length a schedule can produce, or one error naming all that fail."""
    bad = []
    for seq_len in lengths:
        try:
            step_shape(seq_len, **shape_kwargs)
        except GrowLengthError:
            bad.append(seq_len)
    if bad:
        tokens_per_step, world_size = shape_kwargs["tokens_per_step"], shape_kwargs.get("world_size", 1)
        fits = _round_up(tokens_per_step, math.lcm(*lengths) * world_size)
        raise GrowLengthError(
            f"tokens_per_step {tokens_per_step} does not split into whole rows over {world_size} rank(s) "
            f"at seq_len {bad}: choose lengths that divide it, or tokens_per_step {fits}"
        )
    return [step_shape(seq_len, **shape_kwargs) for seq_len in lengths]


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
