"""Token accounting: how long a run trains (`Budget`: steps, tokens or seconds, and the fraction of it
done), and how many sequences one optimizer step holds at a given length, and how they split.

Six batch policies, one name each (`batch_policy`):

    tokens    rows = tokens_per_step / seq_len, exactly (GrowLength's default: every step moves the model
              by the same amount of data). tokens_per_step=8192: seq_len 128 -> 64 rows, 1024 -> 8 rows.
    reshape   rows = floor(tokens_per_step / seq_len): about constant tokens at any length, the way
              DeepSpeed's seqlen curriculum reshapes a batch. 8192 at seq_len 192 -> 42 rows (8064 tokens).
    rows      rows = tokens_per_step / target_len at every length: a step at 128 holds 1/8 of the
              tokens of a step at 1024; no data is skipped.
    truncate  as rows, but each row is cut from a target_len sample and the rest of the sample is
              skipped (Composer's SeqLengthWarmup with truncate=True, DeepSpeed's seqlen curriculum by
              default): data is consumed at the target rate while only seq_len tokens per row are
              trained on.
    megatron  Megatron-DeepSpeed's seqlen_reshape: the step reads tokens_per_step / target_len samples;
              each micro-batch of them is cut into rows of seq_len (recipes.megatron_reshape_rows):
              8 samples of 1024 at seq_len 8 -> 912 rows, not 1024.
    windows   SkyLadder's: the step reads tokens_per_step / target_len samples and cuts each into
              windows of seq_len, the remainder after the last whole window a shorter row of its own
              (its `get_fragment_lens_fixed_length`), so every step trains exactly tokens_per_step
              tokens. 2 samples of 2048 at seq_len 600 -> 6 rows of 600 and 2 rows of 248.
"""

import math
from dataclasses import dataclass

from growlength.errors import GrowLengthError
from growlength.recipes import megatron_reshape_rows
from growlength.schedule import round_up

BATCH_POLICIES = ("tokens", "reshape", "rows", "truncate", "megatron", "windows")


def check_batch_policy(policy: str) -> None:
    if policy not in BATCH_POLICIES:
        raise GrowLengthError(f"batch_policy must be one of {', '.join(BATCH_POLICIES)}, got {policy!r}")


@dataclass(frozen=True, kw_only=True)
class Budget:
    """How long to train: exactly one of steps, tokens or seconds (training time, eval excluded)."""

    steps: int | None = None
    tokens: int | None = None
    seconds: float | None = None

    def __post_init__(self):
        given = [k for k in ("steps", "tokens", "seconds") if getattr(self, k) is not None]
        if len(given) != 1:
            raise GrowLengthError(
                f"give exactly one budget (budget_steps, budget_tokens or budget_seconds), got {given or 'none'}"
            )
        if getattr(self, given[0]) <= 0:
            raise GrowLengthError(f"budget_{given[0]} must be positive, got {getattr(self, given[0])}")

    @property
    def unit(self) -> str:
        return "steps" if self.steps is not None else "tokens" if self.tokens is not None else "seconds"

    @property
    def total(self) -> float:
        return float(getattr(self, self.unit))

    def fraction(self, *, step: int, tokens: int, seconds: float) -> float:
        """The share of the budget done after `step` steps, `tokens` tokens and `seconds` of training."""
        done = {"steps": step, "tokens": tokens, "seconds": seconds}[self.unit]
        return min(1.0, done / self.total)


@dataclass(frozen=True)
class StepShape:
    """One optimizer step: `rows` sequences of `seq_len` over all ranks. Each rank runs `accum`
    micro-batches of at most `micro_rows` sequences (the last may hold fewer). Row i starts
    `row_stride` tokens after row i - 1 in the stream (seq_len, or target_len when truncating).
    Where rows are `cut` from samples, the step reads `samples` samples of `row_stride` tokens: for
    Megatron's reshape each micro-batch's `micro_rows` rows are cut from its share of them; for
    SkyLadder's windows each sample gives rows // samples windows of seq_len, and its remainder is the
    step's `fragment` part (rows of a shorter length, in micro-batches of their own)."""

    seq_len: int
    rows: int
    micro_rows: int
    accum: int
    row_stride: int
    samples: int = 0
    cut: str = ""  # "" (windows of the stream), "megatron" or "windows"
    fragment: "StepShape | None" = None

    @property
    def tokens(self) -> int:
        """Tokens trained on (each is a target once, but for Megatron's overlapping tail rows)."""
        return self.rows * self.seq_len + (self.fragment.tokens if self.fragment else 0)

    @property
    def parts(self) -> list["StepShape"]:
        """The step's parts, each one length in micro-batches of its own: itself, then any fragment."""
        return [self] if self.fragment is None else [self, self.fragment]

    @property
    def micro_batches(self) -> int:
        """Micro-batches per rank over every part (gradients are reduced after the last)."""
        return sum(part.accum for part in self.parts)

    @property
    def consumed(self) -> int:
        """Tokens of the stream the step moves past (more than `tokens` when truncating)."""
        return (self.samples or self.rows) * self.row_stride


def step_shape(
    seq_len: int,
    *,
    tokens_per_step: int,
    target_len: int,
    micro_batch_tokens: int,
    world_size: int = 1,
    batch_policy: str = "tokens",
) -> StepShape:
    """The shape of a step at `seq_len`. Raises GrowLengthError when the numbers do not divide."""
    check_batch_policy(batch_policy)
    if batch_policy == "megatron":
        return _megatron_shape(seq_len, tokens_per_step, target_len, micro_batch_tokens, world_size)
    if batch_policy == "windows":
        return _windows_shape(seq_len, tokens_per_step, target_len, micro_batch_tokens, world_size)
    rows = _rows(seq_len, tokens_per_step, target_len, world_size, batch_policy)
    if rows % world_size:
        raise GrowLengthError(
            f"{rows} rows per step at seq_len {seq_len} do not split over {world_size} ranks: "
            f"make tokens_per_step a multiple of {seq_len * world_size}"
        )
    rank_rows = rows // world_size
    micro_rows = min(rank_rows, max(1, micro_batch_tokens // seq_len))
    stride = target_len if batch_policy == "truncate" else seq_len
    return StepShape(seq_len, rows, micro_rows, accum=-(-rank_rows // micro_rows), row_stride=stride)


def _megatron_shape(
    seq_len: int, tokens_per_step: int, target_len: int, micro_batch_tokens: int, world_size: int
) -> StepShape:
    """Megatron's micro-batch is a whole number of samples (mbs); the step is mbs x world x accum."""
    mbs = max(1, min(micro_batch_tokens, tokens_per_step // world_size) // target_len)
    per_micro = mbs * target_len * world_size
    if tokens_per_step % per_micro:
        raise GrowLengthError(
            f"tokens_per_step {tokens_per_step} is not a whole number of micro-batches of {mbs} samples of "
            f"{target_len} on {world_size} rank(s): use a multiple of {per_micro}"
        )
    accum = tokens_per_step // per_micro
    micro_rows = megatron_reshape_rows(mbs, target_len, seq_len)
    return StepShape(
        seq_len,
        rows=micro_rows * accum * world_size,
        micro_rows=micro_rows,
        accum=accum,
        row_stride=target_len,
        samples=tokens_per_step // target_len,
        cut="megatron",
    )


def _windows_shape(
    seq_len: int, tokens_per_step: int, target_len: int, micro_batch_tokens: int, world_size: int
) -> StepShape:
    """SkyLadder's: whole samples of target_len, each cut into windows of seq_len and a remainder."""
    samples = _rows(target_len, tokens_per_step, target_len, world_size, "tokens")
    if samples % world_size:
        raise GrowLengthError(
            f"{samples} samples per step do not split over {world_size} ranks: "
            f"make tokens_per_step a multiple of {target_len * world_size}"
        )
    windows, rest = divmod(target_len, min(seq_len, target_len))
    fragment = None
    if rest:
        micro = min(samples // world_size, max(1, micro_batch_tokens // rest))
        fragment = StepShape(rest, samples, micro, -(-samples // world_size // micro), rest)
    rank_rows = samples * windows // world_size
    micro_rows = min(rank_rows, max(1, micro_batch_tokens // seq_len))
    return StepShape(
        min(seq_len, target_len),
        rows=samples * windows,
        micro_rows=micro_rows,
        accum=-(-rank_rows // micro_rows),
        row_stride=target_len,
        samples=samples,
        cut="windows",
        fragment=fragment,
    )


def _rows(seq_len: int, tokens_per_step: int, target_len: int, world_size: int, batch_policy: str) -> int:
    if batch_policy == "reshape":
        rows = tokens_per_step // seq_len // world_size * world_size
        if rows == 0:
            raise GrowLengthError(f"tokens_per_step {tokens_per_step} is less than one row of {seq_len} per rank")
        return rows
    per_row = seq_len if batch_policy == "tokens" else target_len
    if tokens_per_step % per_row:
        raise GrowLengthError(
            f"tokens_per_step {tokens_per_step} is not divisible by seq_len {per_row}: "
            f"use a multiple of {per_row} (e.g. {round_up(tokens_per_step, per_row)})"
        )
    return tokens_per_step // per_row


def check_lengths(lengths: tuple[int, ...], **shape_kwargs) -> list[StepShape]:
    """step_shape for every length a schedule can produce, or one error naming all that fail."""
    policy = shape_kwargs.get("batch_policy", "tokens")
    check_batch_policy(policy)
    bad = []
    for seq_len in lengths:
        try:
            step_shape(seq_len, **shape_kwargs)
        except GrowLengthError:
            if policy in ("megatron", "windows"):  # whole samples, whatever the length: their own message
                raise
            bad.append(seq_len)
    if bad:
        tokens_per_step, world_size = shape_kwargs["tokens_per_step"], shape_kwargs.get("world_size", 1)
        fits = round_up(tokens_per_step, math.lcm(*lengths) * world_size)
        raise GrowLengthError(
            f"tokens_per_step {tokens_per_step} does not split into whole rows over {world_size} rank(s) "
            f"at seq_len {bad}: choose lengths that divide it, use tokens_per_step {fits}, "
            "or batch_policy reshape"
        )
    return [step_shape(seq_len, **shape_kwargs) for seq_len in lengths]
