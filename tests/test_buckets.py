"""Dataset Decomposition against apple/ml-dataset-decomposition's code (transcribed below), and the
bucket loader's invariants: no chunk crosses a document, ranks split a step, resume is exact."""

import math
import shutil

import numpy as np
import pytest
from conftest import tiny_config

from growlength.buckets import BucketLoader, bucket_odds, bucket_starts, dd_seq_len, decompose, grow_p2
from growlength.checkpoint import list_checkpoints
from growlength.errors import GrowLengthError
from growlength.trackers import read_metrics
from growlength.train import train


def get_binary_reference(seq, min_log2, max_log2, rng):
    """scripts/make_dd_buckets.py, get_binary(randomize=True), with np.random replaced by `rng`."""
    out_map = {}
    ps = 2 ** np.arange(max_log2 + 1 - min_log2)
    ps = ps / ps.sum()
    while len(seq) > 1:
        k = int(math.log2(len(seq) - 1))
        if k < min_log2:
            return out_map
        if k > max_log2:
            k = rng.choice(np.arange(max_log2, min_log2 - 1, -1), p=ps)
        out_map.setdefault(int(k), []).append(seq[: (1 << k) + 1])
        seq = seq[(1 << k) + 1 :]
    return out_map


@pytest.mark.parametrize("doc_len", [1, 64, 65, 66, 129, 1001, 5000, 70000])
def test_decompose_matches_theirs(doc_len):
    ours = decompose(doc_len, 6, 9, np.random.default_rng(7))
    theirs = get_binary_reference(list(range(doc_len)), 6, 9, np.random.default_rng(7))
    assert sorted(ours) == sorted(k for k, chunks in theirs.items() for _ in chunks)
    assert sum((1 << k) + 1 for k in ours) <= doc_len


def test_chunks_never_cross_a_document():
    rng = np.random.default_rng(0)
    eos, tokens = 0, []
    for doc_len in rng.integers(1, 3000, size=60):
        tokens += list(rng.integers(1, 100, size=doc_len)) + [eos]
    tokens = np.array(tokens)
    starts = bucket_starts(tokens, eos, 4, 8, seed=0)
    doc_of = np.cumsum(np.concatenate([[0], tokens[:-1] == eos]))  # the document index of every token
    n_chunks = 0
    for k, offsets in starts.items():
        for start in offsets:
            chunk = slice(start, start + (1 << k) + 1)
            assert len(set(doc_of[chunk])) == 1  # one document
            assert eos not in tokens[chunk][:-1]  # an eos only as a chunk's last token
            n_chunks += 1
    assert n_chunks > 100 and all(len(s) for s in starts.values())
    with pytest.raises(GrowLengthError, match="no document yields a chunk of \\[512\\]"):
        BucketLoader(tokens, bucket_starts(tokens, eos, 4, 9, seed=0) | {9: np.array([], dtype=np.int64)}, seed=0)


def test_bucket_odds_worked_example_and_each_bucket_gets_its_share():
    assert bucket_odds(0.5, [0.5, 0.5], [2, 1]) == pytest.approx([2 / 3, 1 / 3])
    assert bucket_odds(0.8, [0.5, 0.5], [2, 1]) == pytest.approx([0.0, 1.0])
    # integrating the odds over a cycle gives every bucket exactly its share of the cycle's tokens
    shares = [0.3, 0.25, 0.2, 0.1, 0.1, 0.05]
    grid = (np.arange(20000) + 0.5) / 20000
    used = np.mean([bucket_odds(u, shares, grow_p2(6)) for u in grid], axis=0)
    np.testing.assert_allclose(used, shares, atol=1e-3)
    # Grow-P2: the cycle starts short and ends long
    assert (
        np.argmax(bucket_odds(0.01, shares, grow_p2(6))) == 0 and bucket_odds(0.999, shares, grow_p2(6))[-1] == 1
    )


def test_the_step_draw_is_the_same_on_every_call():
    lengths, shares = (64, 128, 256), [1 / 3] * 3
    draws = [dd_seq_len(p / 100, p, seed=3, lengths=lengths, shares=shares) for p in range(100)]
    assert draws == [dd_seq_len(p / 100, p, seed=3, lengths=lengths, shares=shares) for p in range(100)]
    assert set(draws) == set(lengths)
    early = [d for p, d in enumerate(draws) if (p / 100 * 8) % 1 < 0.25]
    late = [d for p, d in enumerate(draws) if (p / 100 * 8) % 1 > 0.75]
    assert np.mean(early) < np.mean(late)  # short at each cycle's start, long at its end


def test_bucket_loader_resumes_and_splits_over_ranks():
    rng = np.random.default_rng(1)
    tokens = np.concatenate([np.append(rng.integers(1, 50, size=n), 0) for n in rng.integers(200, 4000, size=40)])
    starts = bucket_starts(tokens, 0, 4, 7, seed=0)
    plan = [(16, 8), (128, 2), (32, 4), (16, 8), (64, 2)] * 30  # enough to wrap some buckets' epochs
    whole = BucketLoader(tokens, starts, seed=5)
    batches = [whole.next_batch(n, rows) for n, rows in plan]
    first = BucketLoader(tokens, starts, seed=5)
    for n, rows in plan[:70]:
        first.next_batch(n, rows)
    again = BucketLoader(tokens, starts, seed=5)
    again.load_state_dict(first.state_dict())
    for (n, rows), (x, y) in zip(plan[70:], batches[70:], strict=True):
        got_x, got_y = again.next_batch(n, rows)
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)
        np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted
    ranks = [BucketLoader(tokens, starts, seed=5, rank=r, world_size=2) for r in range(2)]
    for (n, rows), (x, _) in zip(plan[:20], batches[:20], strict=True):
        halves = [loader.next_batch(n, rows)[0] for loader in ranks]
        np.testing.assert_array_equal(np.concatenate(halves), x)
    with pytest.raises(GrowLengthError, match="buckets differ"):
        BucketLoader(tokens, starts, seed=6).load_state_dict(first.state_dict())


def test_dd_trains_one_bucket_per_step_and_resumes_exactly(corpus, tmp_path):
    cfg = tiny_config(
        corpus, schedule="dd", start_len=32, target_len=256, budget_steps=16, evals=2, rope_theta=1e5
    )
    whole = tmp_path / "whole"
    train(cfg, whole, show_progress=False)
    steps, _ = read_metrics(whole)
    assert len({s["seq_len"] for s in steps}) >= 3 and {s["seq_len"] for s in steps} <= {32, 64, 128, 256}
    assert {s["rows"] * s["seq_len"] for s in steps} == {2048}  # constant tokens
    crashed = tmp_path / "crashed"
    shutil.copytree(whole, crashed)
    for path in list_checkpoints(crashed)[1:]:
        shutil.rmtree(path)
    train(None, crashed, resume=True, show_progress=False)
    assert [s["loss"] for s in read_metrics(crashed)[0]] == [s["loss"] for s in steps]
    with pytest.raises(GrowLengthError, match="powers of two: start_len is 48"):
        train(tiny_config(corpus, schedule="dd", start_len=48), tmp_path / "bad", show_progress=False)


def _replay(counting: str, slower: float = 1.0, seconds: float = 40_000.0) -> tuple[float, float]:
    """A seconds budget replayed without a model: constant tokens per step, each bucket's step time from
    its measured tokens/s (the shortest 2.9x quicker per token than the longest, this CPU's 128 vs 8,192)
    times `slower` plus a fixed optimizer step; equal data shares. Returns the longest bucket's share of
    the tokens trained and the fraction of the expected tokens reached when the seconds ran out."""
    from growlength.buckets import cycle_tokens_per_s, token_fraction

    lengths, shares = (256, 512, 1024, 2048, 4096, 8192), [1 / 6] * 6
    speed = dict(zip(lengths, np.geomspace(2.9, 1.0, 6) * 1000.0, strict=True))
    cycle = cycle_tokens_per_s(shares, [speed[n] for n in lengths])
    step_tokens, tokens, done, planned, step, by_len = 8192, 0, 0.0, 0.0, 0, dict.fromkeys(lengths, 0)
    fraction = 0.0
    while done < seconds:
        fraction = (
            done / seconds
            if counting == "seconds"
            else token_fraction(
                tokens, seconds=done, planned_seconds=planned, budget_seconds=seconds, tokens_per_s=cycle
            )
        )
        n = dd_seq_len(fraction, step, seed=0, lengths=lengths, shares=shares)
        by_len[n] += step_tokens
        tokens, step = tokens + step_tokens, step + 1
        done += slower * step_tokens / speed[n] + (0.5 if slower > 1 else 0.0)
        planned += step_tokens / speed[n]
    return by_len[8192] / tokens, fraction


def test_dd_counts_its_cycles_in_tokens_under_a_seconds_budget():
    """DD's cycles are counted in batches of equal tokens: under a seconds budget, counting them in seconds
    gives the quick short buckets more steps; counting in tokens keeps each bucket at its data share, also
    when the steps run slower than measured (the estimate corrects itself) and the run still ends at the
    end of its last cycle."""
    (in_tokens, end), (in_seconds, _) = _replay("tokens"), _replay("seconds")
    assert in_tokens == pytest.approx(1 / 6, abs=0.01) and end > 0.99
    assert in_seconds < in_tokens - 0.03
    slow_share, slow_end = _replay("tokens", slower=1.4)
    assert slow_share == pytest.approx(1 / 6, abs=0.01) and slow_end > 0.98


def test_dd_under_a_seconds_budget_measures_once_and_a_resume_reuses_the_table(corpus, tmp_path, capsys):
    cfg = tiny_config(
        corpus, schedule="dd", start_len=32, budget_steps=None, budget_seconds=3, evals=1, rope_theta=1e5
    )
    train(cfg, tmp_path / "run", show_progress=False)
    first = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dd: tokens/s")]
    assert len(first) == 1 and "cycles counted in tokens" in first[0]
    steps, _ = read_metrics(tmp_path / "run")
    assert len({s["seq_len"] for s in steps}) >= 2
    config = (tmp_path / "run" / "config.yaml").read_text().replace("budget_seconds: 3", "budget_seconds: 4")
    (tmp_path / "run" / "config.yaml").write_text(config)
    train(None, tmp_path / "run", resume=True, show_progress=False)
    again = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dd: tokens/s")]
    assert again[0].split("(")[0] == first[0].split("(")[0]  # the same table, from the checkpoint
