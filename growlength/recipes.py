"""The arena's peer recipes, as their users get them: one pure function per peer, written from the
peer's own code (the file is cited in each docstring), in the peer's own units and step numbering.

Under a step budget each function is the peer's formula exactly. Under token and time budgets the
peers have no answer (DeepSpeed counts steps, Composer refuses durations in tokens); there we give
each the continuous form of its own formula over the fraction of the budget, which is the most
favourable reading: no off-by-one step, no rounding of the warm-up into whole batches, no crash.

`RECIPES` is the table the bench runs: each recipe is a set of train-config values.

Shapes (docs/glossary.md): B samples, S tokens of a sample, R rows cut from them.
"""

import math

import numpy as np

from growlength.errors import GrowLengthError


def deepspeed_seq_len(
    global_step: float, *, total_curriculum_step: float, min_len: int, max_len: int, difficulty_step: int
) -> int:
    """DeepSpeed's `fixed_linear` seqlen curriculum at `global_step`
    (`deepspeed/runtime/data_pipeline/curriculum_scheduler.py`, `__fixed_root_get_difficulty` with
    degree 1): floor(step / total * (max - min) + min), rounded down to `difficulty_step`, raised to the
    first multiple of it at or above min, capped at max.

    The engine asks for `update_difficulty(global_steps + 1)` before the forward pass
    (`deepspeed/runtime/engine.py`), so the first step trains at global_step 1, not 0:
    min 8, max 1024, total 30 -> step 1 trains at floor(1/30 * 1016 + 8) = 41 -> 40.

    >>> deepspeed_seq_len(1, total_curriculum_step=30, min_len=8, max_len=1024, difficulty_step=8)
    40
    """
    length = math.floor(global_step / total_curriculum_step * (max_len - min_len) + min_len)
    length -= length % difficulty_step
    length = max(length, -(-min_len // difficulty_step) * difficulty_step)
    return min(length, max_len)


def composer_seq_len(
    batch: int, *, max_duration_batches: int, duration: float, min_len: int, max_len: int, step_size: int
) -> int:
    """Composer's `SeqLengthWarmup` at `batch` batches done
    (`composer/algorithms/seq_length_warmup/seq_length_warmup.py`, `apply`): a staircase in batches,
    equal batches at every length, reaching max_len before the warm-up fraction ends.

        num_warmup_steps = int(max_duration_batches * duration)
        update_every_n_steps = num_warmup_steps // ((max_len - min_len) // step_size)
        seq_len = step_size * (batch // update_every_n_steps) + min_len, clamped to [min, max]

    Where update_every_n_steps is 0 Composer raises ZeroDivisionError: any run of at most 423 batches
    with the defaults (duration 0.3, 8 -> 1024 in steps of 8). We raise ComposerCrash there.

    >>> composer_seq_len(10, max_duration_batches=1000, duration=0.3, min_len=8, max_len=1024, step_size=8)
    48
    """
    num_updates = (max_len - min_len) // step_size
    every = int(max_duration_batches * duration) // num_updates if num_updates else 0
    if every == 0:
        raise ComposerCrash(max_duration_batches, duration, min_len, max_len, step_size)
    seq_len = step_size * (batch // every) + min_len
    return min(max(seq_len, min_len), max_len)


def composer_seq_len_at(fraction: float, *, duration: float, min_len: int, max_len: int, step_size: int) -> int:
    """The same staircase over a fraction of the budget (token and time budgets): equal shares of the
    warm-up at each of the (max - min) // step_size + 1 lengths, the last reached at `duration`."""
    num_updates = (max_len - min_len) // step_size
    if duration <= 0 or num_updates == 0:
        return max_len
    seq_len = step_size * math.floor(fraction * num_updates / duration + 1e-9) + min_len
    return min(max(seq_len, min_len), max_len)


class ComposerCrash(GrowLengthError):
    """Composer's SeqLengthWarmup divides by zero for this run length."""

    def __init__(self, batches: int, duration: float, min_len: int, max_len: int, step_size: int):
        need = math.ceil((max_len - min_len) // step_size / duration)
        super().__init__(
            f"Composer's SeqLengthWarmup raises ZeroDivisionError on a run of {batches} batches "
            f"(duration {duration}, {min_len} -> {max_len} in steps of {step_size}): it needs at least "
            f"{need} batches. Composer users cannot run this; use a longer run or a token/time budget"
        )


def megatron_reshape_rows(micro_batch_size: int, sample_len: int, seq_len: int) -> int:
    """Rows of `seq_len` that Megatron-DeepSpeed's `seqlen_reshape` makes from one micro-batch of
    `micro_batch_size` samples of `sample_len` tokens (`pretrain_gpt.py`, `data_post_process`): each
    sample holds sample_len + 1 tokens; rows = ceil(mbs * (T + 1) / (L + 1)), at most what the reshape
    and the tails give, and made even when above 1. No reshape at the full length.

    >>> megatron_reshape_rows(8, 1024, 8)  # 8 * 1025 / 9 = 911.1 -> 912 (floor(8192 / 8) would be 1024)
    912
    """
    if seq_len >= sample_len:
        return micro_batch_size
    per_sample = (sample_len + 1) // (seq_len + 1)
    rows = min(math.ceil(micro_batch_size * (sample_len + 1) / (seq_len + 1)), micro_batch_size * (per_sample + 1))
    if rows > 1 and rows % 2:
        rows -= 1
    return rows


def megatron_reshape(samples_BS: np.ndarray, seq_len: int) -> np.ndarray:
    """Megatron-DeepSpeed's `seqlen_reshape` of one micro-batch: samples (B, T + 1) -> rows (R, L + 1).

    Each sample's first floor((T+1)/(L+1)) * (L+1) tokens are cut into rows, then every sample's last
    L + 1 tokens are appended as one more row each (they overlap what was cut), and the first
    `megatron_reshape_rows` rows are kept. Worked example, B = 1, T + 1 = 7, L + 1 = 3:
        [a b c d e f g] -> [a b c] [d e f] + tail [e f g] -> rows = min(ceil(7/3), 2 + 1) = 3 -> odd -> 2
    """
    batch, sample_tokens = samples_BS.shape
    if seq_len + 1 >= sample_tokens:
        return samples_BS
    cut = sample_tokens // (seq_len + 1) * (seq_len + 1)
    rows_R = np.concatenate(
        [samples_BS[:, :cut].reshape(-1, seq_len + 1), samples_BS[:, sample_tokens - seq_len - 1 :]]
    )
    return rows_R[: megatron_reshape_rows(batch, sample_tokens - 1, seq_len)]


BASELINE = "fixed-target"
DEFAULT_RUNS = "fixed-target,growlength,composer,deepspeed,deepspeed-reshape,skyladder,dd"

# The arena: every recipe as train-config values. `{start_len}` and `{short_len}` are the bench's;
# `{dd_start_len}` is target_len / 32.
RECIPES = {
    # the baseline: every step at the target length
    "fixed-target": {"schedule": "constant"},
    # the paper's "LLM128": all steps short, evaluated at the target (extrapolation)
    "fixed-short": {"schedule": "stages", "stages": "{short_len}:1"},
    # GrowLength: doubling stages, equal shares of the budget, constant tokens per step
    "growlength": {"schedule": "doubling", "start_len": "{start_len}"},
    "growlength-64": {"schedule": "doubling", "start_len": 64},
    # GrowLength planned from this machine's measured speed (schedule.plan_stages): doubling lengths,
    # time shares growing with how much cheaper each length's tokens are; measuring is setup, not training time
    "growlength-auto": {"schedule": "auto", "start_len": "{start_len}"},
    # GrowLength whose changes of length the run itself decides (adaptive.py): doubling lengths, each
    # stage ended when its loss stops falling fast enough for what the next length's tokens cost
    "growlength-adaptive": {"schedule": "adaptive", "start_len": "{start_len}"},
    # GrowLength growing the batch with the length, as the NanoGPT speedrun's three stages grow it
    # (1x, 2x, 3x the tokens per step, the LR by the square root of that): grow_both_stages
    "growlength-batch": {"schedule": "stages", "stages": "{grow_both_stages}"},
    # BERT's two phases, by hand: 90% of the budget at a quarter of the target (its 128 of 512), then the target
    "bert-two-phase": {"schedule": "stages", "stages": "{two_phase_stages}"},
    # GrowLength with rows held constant: short steps hold fewer tokens (the other reading of the paper)
    "growlength-rows": {"schedule": "doubling", "start_len": "{start_len}", "batch_policy": "rows"},
    # Composer SeqLengthWarmup defaults: a staircase 8 -> target in steps of 8 over the first 30% of the
    # batches, truncate=True (rows constant, the rest of each sample skipped)
    "composer": {"schedule": "composer", "start_len": 8, "multiple": 8, "ramp": 0.3, "batch_policy": "truncate"},
    # DeepSpeed's seqlen curriculum as documented: fixed_linear from 8 in steps of 8, truncated samples
    "deepspeed": {"schedule": "deepspeed", "start_len": 8, "multiple": 8, "ramp": 0.3, "batch_policy": "truncate"},
    # the same with Megatron-DeepSpeed's opt-in seqlen_reshape (rows cut from each micro-batch's samples)
    "deepspeed-reshape": {
        "schedule": "deepspeed",
        "start_len": 8,
        "multiple": 8,
        "ramp": 0.3,
        "batch_policy": "megatron",
    },
    # SkyLadder's schedule (sail-sg/SkyLadder, lit_gpt/packed_dataset.py) with real short sequences: its
    # linear window from init_mask_length 32, every length (no rounding); each sample cut into windows
    # and the remainder its own row (get_fragment_lens_fixed_length), so every step trains B x T tokens.
    # Its default dm8 adds one token of window every 8 steps, which at its 8k scale grows over ~65% of the
    # run; at a bench's few hundred steps the same rule would never reach the target, so the ramp is
    # given as that share of the budget.
    "skyladder": {"schedule": "linear", "start_len": 32, "multiple": 1, "ramp": 0.65, "batch_policy": "windows"},
    # Dataset Decomposition: power-of-two document chunks, one bucket per step, Grow-P2 over 8 cycles,
    # six buckets up to the target (256..8192 in the paper), RoPE base 100k (buckets.py)
    "dd": {"schedule": "dd", "start_len": "{dd_start_len}", "batch_policy": "tokens", "rope_theta": "100000"},
}


def grow_both_stages(start_len: int, target_len: int) -> str:
    """GrowLength's doubling lengths and equal shares, the tokens per step growing with the length in the
    NanoGPT speedrun's proportions (its batches of 131k, 262k and 393k tokens over three stages): 1x
    below a quarter of the target, 2x up to half of it, 3x at the target, the LR scaled by the square
    root of the batch's growth (the speedrun scales it by 0.5-0.6 powers).

    >>> grow_both_stages(128, 1024)
    '128:1/4,256:1/4:x2:1.4142,512:1/4:x2:1.4142,1024:1/4:x3:1.7321'
    """
    lengths = [start_len]
    while lengths[-1] * 2 < target_len:
        lengths.append(lengths[-1] * 2)
    lengths = [n for n in lengths if n < target_len] + [target_len]  # the doubling grid (schedule.py's)
    stages = []
    for n in lengths:
        times = 3 if n == target_len else 2 if 4 * n >= target_len else 1
        batch = f":x{times}:{times**0.5:.4f}" if times > 1 else ""
        stages.append(f"{n}:1/{len(lengths)}{batch}")
    return ",".join(stages)


def recipe(name: str, *, short_len: int, start_len: int, target_len: int = 1024) -> dict:
    """Train-config values of a named recipe."""
    if name not in RECIPES:
        raise GrowLengthError(f"unknown bench run {name!r}: choose from {', '.join(RECIPES)}")
    fill = {
        "short_len": short_len,
        "start_len": start_len,
        "dd_start_len": max(2, target_len // 32),
        "grow_both_stages": grow_both_stages(start_len, target_len),
        "two_phase_stages": f"{max(2, target_len // 4)}:0.9,{target_len}:0.1",
    }
    return {k: _fill(v, fill) for k, v in RECIPES[name].items()}


def _fill(value, fill: dict):
    if not isinstance(value, str) or "{" not in value:
        return value
    text = value.format(**fill)
    return int(text) if text.isdigit() else text
