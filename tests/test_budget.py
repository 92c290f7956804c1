import re

import pytest

from growlength.budget import check_lengths, step_shape
from growlength.errors import GrowLengthError

KW = dict(tokens_per_step=8192, target_len=1024, micro_batch_tokens=8192)


@pytest.mark.parametrize(("seq_len", "rows"), [(128, 64), (256, 32), (512, 16), (1024, 8)])
def test_constant_tokens_per_step(seq_len, rows):
    shape = step_shape(seq_len, **KW)
    assert (shape.rows, shape.tokens, shape.accum, shape.micro_rows) == (rows, 8192, 1, rows)


def test_rows_constant_is_the_truncation_baseline():
    shapes = [step_shape(n, **KW, batch_policy="rows") for n in (128, 512, 1024)]
    assert [s.rows for s in shapes] == [8, 8, 8]
    assert [s.tokens for s in shapes] == [1024, 4096, 8192]


def test_accumulation_when_a_micro_batch_would_not_fit():
    shape = step_shape(128, tokens_per_step=8192, target_len=1024, micro_batch_tokens=2048)
    assert (shape.micro_rows, shape.accum) == (16, 4)
    assert shape.micro_rows * shape.accum == shape.rows
    # a micro budget smaller than one row still runs one row at a time
    shape = step_shape(1024, tokens_per_step=8192, target_len=1024, micro_batch_tokens=100)
    assert (shape.micro_rows, shape.accum) == (1, 8)


def test_uneven_micro_batches_cover_the_rank_rows():
    # 24 rows over 2 ranks = 12 per rank; at most 5 fit in a micro-batch: 5 + 5 + 2.
    shape = step_shape(64, tokens_per_step=1536, target_len=64, micro_batch_tokens=5 * 64, world_size=2)
    assert (shape.rows, shape.micro_rows, shape.accum) == (24, 5, 3)


def test_reshape_keeps_about_constant_tokens_at_any_length():
    shapes = [step_shape(n, **KW, batch_policy="reshape") for n in (8, 192, 1000, 1024)]
    assert [s.rows for s in shapes] == [1024, 42, 8, 8]
    assert all(8192 - s.seq_len < s.tokens <= 8192 for s in shapes)
    assert step_shape(192, **KW, batch_policy="reshape", world_size=4).rows == 40  # split evenly over ranks


def test_truncate_holds_rows_and_skips_the_rest_of_each_sample():
    shape = step_shape(128, **KW, batch_policy="truncate")
    assert (shape.rows, shape.tokens, shape.row_stride, shape.consumed) == (8, 1024, 1024, 8192)
    assert step_shape(128, **KW, batch_policy="rows").consumed == 1024


def test_unknown_batch_policy():
    with pytest.raises(GrowLengthError, match="batch_policy must be one of"):
        step_shape(128, **KW, batch_policy="samples")


def test_ranks_split_rows():
    shape = step_shape(256, tokens_per_step=8192, target_len=1024, micro_batch_tokens=8192, world_size=4)
    assert shape.rows == 32 and shape.micro_rows * shape.accum == 8


def test_non_divisible_tokens_per_step_is_refused_with_a_fix():
    with pytest.raises(GrowLengthError, match="not divisible by seq_len 384") as e:
        step_shape(384, **KW)
    assert "8448" in str(e.value)  # the next multiple of 384


def test_rows_that_do_not_split_over_ranks_are_refused():
    with pytest.raises(GrowLengthError, match="do not split over 3 ranks"):
        step_shape(1024, **KW, world_size=3)


def test_check_lengths_names_every_bad_length_and_a_value_that_works():
    with pytest.raises(GrowLengthError) as e:
        check_lengths((128, 192, 256, 320), **KW)
    message = str(e.value)
    assert "[192, 320]" in message
    fits = int(re.search(r"use tokens_per_step (\d+)", message).group(1))
    assert all(fits % n == 0 for n in (128, 192, 256, 320))
    check_lengths((128, 192, 256, 320), **{**KW, "tokens_per_step": fits})


def test_check_lengths_returns_a_shape_per_length():
    shapes = check_lengths((128, 256, 512, 1024), **KW)
    assert [s.seq_len for s in shapes] == [128, 256, 512, 1024]
    assert {s.tokens for s in shapes} == {8192}
