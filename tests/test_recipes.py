"""Each peer's recipe against that peer's own code, transcribed below (the references keep the peers'
names and arithmetic), in the peer's own step numbering."""

import math

import numpy as np
import pytest

from growlength.budget import step_shape
from growlength.errors import GrowLengthError
from growlength.recipes import (
    ComposerCrash,
    composer_seq_len,
    deepspeed_seq_len,
    megatron_reshape,
    megatron_reshape_rows,
    recipe,
)
from growlength.schedule import make_schedule


def deepspeed_reference(global_steps, total_curriculum_step, min_difficulty, max_difficulty, difficulty_step):
    """deepspeed/runtime/data_pipeline/curriculum_scheduler.py, __fixed_root_get_difficulty, degree 1,
    as update_difficulty(global_steps) applies it (the difficulty only moves while below max)."""
    next_difficulty = (float(global_steps) / total_curriculum_step) ** (1.0 / 1)
    next_difficulty = math.floor(next_difficulty * (max_difficulty - min_difficulty) + min_difficulty)
    next_difficulty -= next_difficulty % difficulty_step
    next_difficulty = max(next_difficulty, -(-min_difficulty // difficulty_step) * difficulty_step)
    return min(next_difficulty, max_difficulty)


def composer_reference(batch, max_duration, duration, min_seq_length, max_seq_length, step_size):
    """composer/algorithms/seq_length_warmup/seq_length_warmup.py, SeqLengthWarmup.apply."""
    num_warmup_steps = int(max_duration * duration)
    num_update_steps = (max_seq_length - min_seq_length) // step_size
    update_every_n_steps = num_warmup_steps // num_update_steps
    curr_seq_len = step_size * (batch // update_every_n_steps) + min_seq_length  # ZeroDivisionError here
    curr_seq_len = max(curr_seq_len, min_seq_length)
    return min(curr_seq_len, max_seq_length)


def megatron_reference(text, current_seqlen):
    """Megatron-DeepSpeed pretrain_gpt.py, data_post_process, the seqlen_reshape branch (numpy)."""
    orig_num_token = text.size
    reshape_len = (text.shape[1] // (current_seqlen + 1)) * (current_seqlen + 1)
    text = np.concatenate(
        (text[:, :reshape_len].reshape(-1, current_seqlen + 1), text[:, -(current_seqlen + 1) :]), 0
    )
    num_row = math.ceil(orig_num_token / (current_seqlen + 1))
    num_row = min(num_row, text.shape[0])
    if num_row > 1 and num_row % 2 != 0:
        num_row -= 1
    return text[:num_row, :]


def test_deepspeed_trains_step_k_at_global_step_k_plus_1():
    # 100 steps, ramp 0.3 -> total_curriculum_step 30; the first step is global step 1: 41.87 -> 40, not 8;
    # step 29 trains at 29/30 * 1016 + 8 = 990.1 -> 984
    schedule = make_schedule("deepspeed", start_len=8, target_len=1024, ramp=0.3, multiple=8, total_steps=100)
    ours = [schedule.seq_len_at(k / 100) for k in range(100)]
    theirs = [deepspeed_reference(k + 1, 30, 8, 1024, 8) for k in range(100)]
    assert ours == theirs
    assert ours[:3] == [40, 72, 104] and ours[28] == 984 and ours[29] == 1024 == ours[-1]


@pytest.mark.parametrize(("min_len", "step"), [(8, 8), (10, 8), (64, 64), (8, 16)])
def test_deepspeed_formula_matches_theirs(min_len, step):
    for total in (1, 7, 30, 333):
        for global_step in range(0, 2 * total + 2):
            ours = deepspeed_seq_len(
                global_step, total_curriculum_step=total, min_len=min_len, max_len=1000, difficulty_step=step
            )
            assert ours == deepspeed_reference(global_step, total, min_len, 1000, step)


def test_deepspeed_lengths_are_all_listed():
    schedule = make_schedule("deepspeed", start_len=10, target_len=200, ramp=0.5, multiple=8, total_steps=50)
    seen = {schedule.seq_len_at(k / 50) for k in range(51)}
    assert seen <= set(schedule.all_lengths()) and min(seen) == 16  # raised to a multiple of 8


def test_composer_is_a_staircase_in_batches():
    n = 1000
    schedule = make_schedule("composer", start_len=8, target_len=1024, ramp=0.3, multiple=8, total_steps=n)
    ours = [schedule.seq_len_at(b / n) for b in range(n)]
    assert ours == [composer_reference(b, n, 0.3, 8, 1024, 8) for b in range(n)]
    # int(300) // 127 = 2 batches per length: the target arrives at batch 254, long before 30% (300)
    assert ours[:4] == [8, 8, 16, 16] and ours.index(1024) == 254
    assert all(ours.count(seq_len) == 2 for seq_len in range(8, 1024, 8))


@pytest.mark.parametrize(("batches", "crashes"), [(100, True), (423, True), (424, False), (5000, False)])
def test_composer_crash_region_is_theirs(batches, crashes):
    try:
        composer_reference(0, batches, 0.3, 8, 1024, 8)
        theirs = False
    except ZeroDivisionError:
        theirs = True
    assert theirs == crashes
    if crashes:
        with pytest.raises(ComposerCrash, match=f"run of {batches} batches.*at least 424"):
            make_schedule("composer", start_len=8, target_len=1024, ramp=0.3, multiple=8, total_steps=batches)
    else:
        assert composer_seq_len(0, max_duration_batches=batches, duration=0.3, min_len=8, max_len=1024,
                                step_size=8) == 8  # fmt: skip


def test_composer_over_a_time_budget_is_the_continuous_staircase():
    schedule = make_schedule("composer", start_len=8, target_len=40, ramp=0.5, multiple=8)  # 4 steps up
    table = {0.0: 8, 0.124: 8, 0.125: 16, 0.25: 24, 0.375: 32, 0.4999: 32, 0.5: 40, 1.0: 40}
    assert {p: schedule.seq_len_at(p) for p in table} == table


@pytest.mark.parametrize("seq_len", [8, 9, 63, 64, 100, 511, 512, 1000, 1023])
@pytest.mark.parametrize("mbs", [1, 2, 8])
def test_megatron_reshape_matches_theirs(seq_len, mbs):
    samples = np.arange(mbs * 1025).reshape(mbs, 1025)
    theirs = megatron_reference(samples, seq_len)
    np.testing.assert_array_equal(megatron_reshape(samples, seq_len), theirs)
    assert megatron_reshape_rows(mbs, 1024, seq_len) == len(theirs)


def test_megatron_rows_in_a_step():
    # 8 samples of 1024 per step, one micro-batch of 8: 912 rows at 8 (floor(8192 / 8) would be 1024)
    shape = step_shape(8, tokens_per_step=8192, target_len=1024, micro_batch_tokens=8192, batch_policy="megatron")
    assert (shape.rows, shape.micro_rows, shape.accum, shape.consumed) == (912, 912, 1, 8192)
    # two micro-batches of 4 samples: 456 rows each
    shape = step_shape(8, tokens_per_step=8192, target_len=1024, micro_batch_tokens=4096, batch_policy="megatron")
    assert (shape.rows, shape.micro_rows, shape.accum) == (912, 456, 2)
    full = step_shape(
        1024, tokens_per_step=8192, target_len=1024, micro_batch_tokens=4096, batch_policy="megatron"
    )
    assert (full.rows, full.tokens, full.consumed) == (8, 8192, 8192)
    with pytest.raises(GrowLengthError, match="whole number of micro-batches"):
        step_shape(8, tokens_per_step=3072, target_len=1024, micro_batch_tokens=2048, batch_policy="megatron")


def skyladder_window(iter_num: int, changing_point: int, init: int = 32, final: int = 2048) -> int:
    """SkyLadder's `calculate_mask_length_linear_schedule` (lit_gpt/packed_dataset.py), transcribed."""
    if iter_num >= changing_point:
        return final
    return init + int((final - init) * (iter_num / changing_point))


def skyladder_fragments(n: int, window: int) -> list[int]:
    """SkyLadder's `get_fragment_lens_fixed_length(chunk, window, is_multiple=False)`, transcribed: the
    lengths of the pieces a chunk of n tokens is cut into."""
    ends = np.arange(window, n, window) - 1
    if ends.size == 0:
        return [n]
    lengths, prev = [], 0
    for end in ends:
        lengths.append(int(end) - prev + 1)
        prev = int(end) + 1
    if prev < n:
        lengths.append(n - prev)
    return lengths


def test_skyladder_is_its_linear_window_from_32_over_65_percent():
    values = recipe("skyladder", short_len=128, start_len=128)
    schedule = make_schedule(
        values["schedule"],
        start_len=values["start_len"],
        target_len=2048,
        ramp=values["ramp"],
        multiple=values["multiple"],
    )
    total = 10_000
    for step in (0, 1, 100, 1234, 3000, 6499, 6500, 9000):
        assert schedule.seq_len_at(step / total) == skyladder_window(step, changing_point=int(0.65 * total))
    assert values["batch_policy"] == "windows"


@pytest.mark.parametrize("seq_len", [32, 33, 100, 600, 1023, 1024, 1500, 2047, 2048])
def test_skyladder_windows_train_every_token_of_each_sample_as_its_code_cuts_it(seq_len):
    from growlength.train import cut_windows

    shape = step_shape(
        seq_len, tokens_per_step=4096, target_len=2048, micro_batch_tokens=4096, batch_policy="windows"
    )
    assert shape.tokens == shape.consumed == 4096  # B x T every step
    assert [part.seq_len for part in shape.parts for _ in range(part.rows // 2)] == skyladder_fragments(
        2048, seq_len
    )
    samples_BS = np.arange(2 * 2049).reshape(2, 2049)
    parts = cut_windows(samples_BS, seq_len)
    assert [len(rows) for rows in parts] == [part.rows for part in shape.parts]
    # each target of a sample once, with the token before it as its input
    targets = np.sort(np.concatenate([rows[:, 1:].ravel() for rows in parts]))
    np.testing.assert_array_equal(targets, np.sort(samples_BS[:, 1:].ravel()))
    for rows in parts:
        np.testing.assert_array_equal(np.diff(rows, axis=1), 1)  # contiguous within a sample


def test_recipes_fill_the_bench_values():
    assert recipe("fixed-short", short_len=64, start_len=128)["stages"] == "64:1"
    assert recipe("growlength", short_len=64, start_len=32)["start_len"] == 32
    assert recipe("deepspeed", short_len=64, start_len=32)["batch_policy"] == "truncate"
    assert recipe("deepspeed-reshape", short_len=64, start_len=32)["batch_policy"] == "megatron"
    with pytest.raises(GrowLengthError, match="unknown bench run"):
        recipe("nope", short_len=128, start_len=128)


@pytest.mark.parametrize(("start", "target"), [(32, 2048), (16, 1024), (8, 256), (32, 8192)])
def test_grow_both_runs_growlengths_lengths_and_grows_the_batch_toward_the_target(start, target):
    from growlength.recipes import grow_both_stages
    from growlength.schedule import doubling_lengths

    schedule = make_schedule("stages", start_len=start, target_len=target, stages=grow_both_stages(start, target))
    assert schedule.lengths == doubling_lengths(start, target)
    tokens = [schedule.tokens_per_step(n, 2048) for n in schedule.lengths]
    assert tokens == sorted(tokens) and tokens[0] == 2048 and tokens[-1] == 3 * 2048
    assert [schedule.lr_scale(n) for n in schedule.lengths] == pytest.approx(
        [(t / 2048) ** 0.5 for t in tokens], abs=1e-4
    )
