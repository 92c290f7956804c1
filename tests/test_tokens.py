import json

import numpy as np
import pytest

from growlength.errors import GrowLengthError
from growlength.tokens import Loader, Stream, eval_windows, indices_of, open_tokens

# Unique token values, so "each token exactly once" can be checked by value.
STREAM = np.arange(10_000, dtype=np.uint32)


def reference_epoch(tokens, seed, epoch, block):
    """The shuffled stream of one epoch, built independently of the loader."""
    n_blocks = -(-len(tokens) // block)
    order = np.random.default_rng([seed, epoch]).permutation(n_blocks)
    return np.concatenate([tokens[b * block : (b + 1) * block] for b in order])


def consume(loader, plan):
    """Run (seq_len, rows) batches; return inputs and targets flattened in stream order."""
    inputs, targets = [], []
    for seq_len, rows in plan:
        x, y = loader.next_batch(seq_len, rows)
        assert x.shape == y.shape == (rows // loader.world_size, seq_len)
        inputs.append(x.ravel())
        targets.append(y.ravel())
    return np.concatenate(inputs), np.concatenate(targets)


def test_windows_joined_back_equal_the_stream_across_length_changes():
    loader = Loader(STREAM, seed=3, block_tokens=700)
    plan = [(64, 16)] * 3 + [(128, 8)] * 3 + [(256, 4)] * 2 + [(1024, 1)]
    assert len({seq_len for seq_len, _ in plan}) == 4  # the lengths really change
    inputs, targets = consume(loader, plan)
    stream = reference_epoch(STREAM, 3, 0, 700)
    n = len(inputs)
    assert np.array_equal(inputs, stream[:n])
    assert np.array_equal(targets, stream[1 : n + 1])
    assert len(np.unique(targets)) == n  # no token is a target twice
    assert loader.cursor == n


def test_each_token_is_a_target_once_per_epoch_and_epochs_reshuffle():
    loader = Loader(STREAM, seed=0, block_tokens=1000)
    _, targets = consume(loader, [(100, 10)] * 30)  # 3 epochs of 10,000 tokens
    first, second = reference_epoch(STREAM, 0, 0, 1000), reference_epoch(STREAM, 0, 1, 1000)
    # targets are stream positions 1..30000: epoch 0 contributes all its tokens but its first one
    assert np.array_equal(np.sort(targets[:9999]), np.setdiff1d(STREAM, [first[0]]))
    assert np.array_equal(np.sort(targets[9999:19999]), STREAM)  # epoch 1: every token exactly once
    assert np.array_equal(targets[9999:19999], second)
    assert not np.array_equal(first, second)


def test_shuffle_does_not_depend_on_the_lengths_asked_for():
    a = Loader(STREAM, seed=7, block_tokens=512)
    b = Loader(STREAM, seed=7, block_tokens=512)
    xa, _ = consume(a, [(64, 8)] * 8)
    xb, _ = consume(b, [(256, 2)] * 2 + [(32, 16)] * 4 + [(512, 1)] * 2)
    assert len(xa) == len(xb) == 4096
    assert np.array_equal(xa, xb)


def test_state_dict_resume_gives_the_same_next_batches():
    plan = [(64, 8), (64, 8), (128, 4), (256, 2), (256, 2), (512, 1)]
    full = Loader(STREAM, seed=1, block_tokens=300)
    expected = [full.next_batch(*p) for p in plan]
    first = Loader(STREAM, seed=1, block_tokens=300)
    for p in plan[:3]:
        first.next_batch(*p)
    state = json.loads(json.dumps(first.state_dict()))  # it travels as JSON in a checkpoint
    resumed = Loader(STREAM, seed=1, block_tokens=300)
    resumed.load_state_dict(state)
    for p, (x, y) in zip(plan[3:], expected[3:]):
        rx, ry = resumed.next_batch(*p)
        assert np.array_equal(rx, x) and np.array_equal(ry, y)


def test_row_stride_truncates_each_sample_and_skips_its_rest():
    loader = Loader(STREAM, seed=0, block_tokens=10_000)  # one block: the stream is STREAM itself
    x, y = loader.next_batch(4, 3, row_stride=10)
    assert x.tolist() == [[0, 1, 2, 3], [10, 11, 12, 13], [20, 21, 22, 23]]
    assert y.tolist() == [[1, 2, 3, 4], [11, 12, 13, 14], [21, 22, 23, 24]]
    assert loader.cursor == 30
    x, _ = loader.next_batch(10, 1, row_stride=10)  # stride == seq_len: contiguous again
    assert x.tolist() == [list(range(30, 40))]


@pytest.mark.parametrize("change", [{"seed": 2}, {"block_tokens": 301}])
def test_resume_into_a_different_stream_is_refused(change):
    state = Loader(STREAM, seed=1, block_tokens=300).state_dict()
    other = Loader(STREAM, **{"seed": 1, "block_tokens": 300, **change})
    with pytest.raises(GrowLengthError, match="resume with the same data"):
        other.load_state_dict(state)


@pytest.mark.parametrize("lanes", [1, 3])
def test_ranks_read_disjoint_slices_whose_union_is_the_single_process_batch(lanes):
    plan = [(64, 8), (128, 4), (256, 2), (32, 6)]
    single = Loader(STREAM, seed=5, block_tokens=256, lanes=lanes)
    ranks = [Loader(STREAM, seed=5, block_tokens=256, lanes=lanes, rank=r, world_size=2) for r in range(2)]
    for seq_len, rows in plan:
        x, _ = single.next_batch(seq_len, rows)
        parts = [loader.next_batch(seq_len, rows)[0] for loader in ranks]
        assert np.array_equal(np.concatenate(parts), x)
        assert not set(parts[0].ravel()) & set(parts[1].ravel())
    assert ranks[0].cursor == ranks[1].cursor == single.cursor


def test_lanes_worked_example():
    loader = Loader(np.arange(8), seed=0, block_tokens=4, lanes=2)
    assert reference_epoch(np.arange(8), 0, 0, 4).tolist() == list(range(8))  # seed 0 keeps the blocks' order
    x, _ = loader.next_batch(1, 2)
    assert x.tolist() == [[0], [4]] and loader.lane_cursors.tolist() == [1, 1]
    x, _ = loader.next_batch(2, 1)
    assert x.tolist() == [[1, 2]] and loader.lane_cursors.tolist() == [3, 1]
    x, _ = loader.next_batch(1, 3)  # the deal goes on from lane 1
    assert x.tolist() == [[4 + 1], [3], [4 + 2]] and loader.cursor == 7


def test_lanes_cover_each_region_once_whatever_the_lengths_and_spread_a_step():
    lanes, block = 5, 400
    loader = Loader(STREAM, seed=4, block_tokens=block, lanes=lanes)
    lane_len = len(STREAM) // lanes
    epoch = reference_epoch(STREAM, 4, 0, block)
    region_of = np.empty(len(STREAM), dtype=int)
    region_of[epoch] = np.minimum(np.arange(len(STREAM)) // lane_len, lanes)  # value -> its region
    seen, plan = [], [(16, 8)] * 20 + [(32, 4)] * 10 + [(64, 2)] * 10 + [(7, 3)] * 5 + [(128, 1)] * 9
    for seq_len, rows in plan:
        x, y = loader.next_batch(seq_len, rows)
        for row_x, row_y in zip(x, y):  # a row is a contiguous piece of one region
            at = np.flatnonzero(epoch == row_x[0])[0]
            assert np.array_equal(row_x, epoch[at : at + seq_len])
            assert row_y[-1] == epoch[at + seq_len]
            assert len(set(region_of[row_x])) == 1
        if rows <= lanes:  # a step's rows come from as many regions as it has rows
            assert len({region_of[row[0]] for row in x}) == rows
        seen.append(x.ravel())
    seen = np.concatenate(seen)
    assert loader.lane_cursors.max() <= lane_len  # still in the first lap of every lane
    assert len(np.unique(seen)) == len(seen) == loader.cursor  # no token twice
    assert np.ptp(loader.lane_cursors) <= 128  # lanes advance together, within a row


def test_lanes_wrap_into_the_same_region_of_the_next_epoch():
    loader = Loader(STREAM, seed=2, block_tokens=1000, lanes=4)
    consume(loader, [(100, 4)] * 25)  # exactly one lap of each 2,500-token lane
    x, _ = loader.next_batch(100, 4)
    second = reference_epoch(STREAM, 2, 1, 1000)
    assert [row.tolist() for row in x] == [second[j * 2500 : j * 2500 + 100].tolist() for j in range(4)]


def test_lanes_are_capped_by_the_corpus_and_a_resume_needs_the_same_lanes():
    assert Loader(STREAM, seed=0, block_tokens=3000, lanes=64).lanes == 3
    loader = Loader(STREAM, seed=0, block_tokens=500, lanes=4)
    consume(loader, [(50, 3)] * 3)
    state = json.loads(json.dumps(loader.state_dict()))
    with pytest.raises(GrowLengthError, match="resume with --lanes 4"):
        Loader(STREAM, seed=0, block_tokens=500, lanes=3).load_state_dict(state)
    resumed = Loader(STREAM, seed=0, block_tokens=500, lanes=4)
    resumed.load_state_dict(state)
    assert np.array_equal(resumed.next_batch(20, 6)[0], loader.next_batch(20, 6)[0])
    # a checkpoint from before lanes (a cursor alone) resumes a one-lane loader
    old = Loader(STREAM, seed=0, block_tokens=500)
    old.load_state_dict({"cursor": 1234, "seed": 0, "block_tokens": 500, "n_tokens": len(STREAM)})
    assert old.cursor == 1234
    assert np.array_equal(old.next_batch(4, 1)[0][0], reference_epoch(STREAM, 0, 0, 500)[1234:1238])


def test_eval_windows_score_the_same_tokens_at_every_length():
    val = np.arange(5000, dtype=np.uint16)
    by_len = {n: eval_windows(val, n, 4096) for n in (128, 512, 2048)}
    for x, y in by_len.values():
        assert np.array_equal(y.ravel(), np.arange(1, 4097))
        assert np.array_equal(x.ravel(), np.arange(0, 4096))
    with pytest.raises(GrowLengthError, match="too few"):
        eval_windows(val, 8192, 4096)


def write_prepared(path, train, val, **meta):
    path.mkdir(exist_ok=True)
    train.tofile(path / "train.bin")
    val.tofile(path / "val.bin")
    base = dict(dtype=train.dtype.name, vocab_size=100, eos_id=0, train_tokens=len(train), val_tokens=len(val))
    (path / "meta.json").write_text(json.dumps({**base, "tokenizer_sha256": "x", **meta}))


def test_open_tokens_checks_the_files_against_meta(tmp_path):
    train, val = np.arange(50, dtype=np.uint16), np.arange(10, dtype=np.uint16)
    write_prepared(tmp_path / "ok", train, val)
    data = open_tokens(tmp_path / "ok")
    assert np.array_equal(data.train, train) and data.vocab_size == 100

    write_prepared(tmp_path / "short", train, val, train_tokens=60)
    with pytest.raises(GrowLengthError, match="truncated"):
        open_tokens(tmp_path / "short")

    write_prepared(tmp_path / "gone", train, val)
    (tmp_path / "gone" / "val.bin").unlink()
    with pytest.raises(GrowLengthError, match="missing"):
        open_tokens(tmp_path / "gone")

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "meta.json").write_text("{not json")
    with pytest.raises(GrowLengthError, match="not valid JSON"):
        open_tokens(tmp_path / "bad")

    with pytest.raises(GrowLengthError, match="growlength prepare"):
        open_tokens(tmp_path / "nowhere")


def shards_of(tokens, cuts):
    return [tokens[a:b] for a, b in zip([0, *cuts], [*cuts, len(tokens)], strict=True)]


def test_a_stream_of_shards_reads_like_the_joined_array():
    parts = shards_of(STREAM, [1, 2500, 2501, 7000])
    stream = Stream(parts)
    rng = np.random.default_rng(0)
    assert len(stream) == len(STREAM) and stream.max() == STREAM.max()
    assert stream[-1] == STREAM[-1] and stream[2500] == STREAM[2500]
    for a, b in rng.integers(0, len(STREAM) + 5, size=(300, 2)):
        assert np.array_equal(stream[a:b], STREAM[a:b])
    assert np.array_equal(np.asarray(stream), STREAM)
    index = rng.integers(0, len(STREAM), size=(50, 7))
    assert np.array_equal(stream.take(index), STREAM[index])
    stream_with_eos = Stream(shards_of(STREAM % 97, [1, 300, 9000]))
    assert np.array_equal(indices_of(stream_with_eos, 5), np.flatnonzero(STREAM % 97 == 5))


@pytest.mark.parametrize("lanes", [1, 7])
def test_the_loader_over_shards_gives_the_batches_of_the_joined_array(lanes):
    """Blocks cross shard ends freely: the shuffled stream and every batch are those of one array."""
    plan = [(16, 8), (32, 4), (64, 2), (128, 1)] * 100  # four epochs of 10,000 tokens
    flat = consume(Loader(STREAM, seed=5, block_tokens=300, lanes=lanes), plan)
    shards = Stream(shards_of(STREAM, [123, 4000, 4001, 9999]))
    sharded = consume(Loader(shards, seed=5, block_tokens=300, lanes=lanes), plan)
    assert np.array_equal(flat[0], sharded[0]) and np.array_equal(flat[1], sharded[1])


def test_prepared_folders_of_the_first_format_and_of_shards_both_open(tmp_path):
    write_prepared(tmp_path / "v1", np.arange(50, dtype=np.uint16), np.arange(10, dtype=np.uint16))
    v2 = tmp_path / "v2"
    v2.mkdir()
    shards = {"train": [], "val": []}
    for split, parts in (
        ("train", shards_of(np.arange(50, 90, dtype=np.uint16), [15, 30])),
        ("val", [np.arange(9)]),
    ):
        for i, part in enumerate(parts):
            part.astype(np.uint16).tofile(v2 / f"{split}-{i:05d}.bin")
            shards[split].append({"file": f"{split}-{i:05d}.bin", "tokens": len(part), "max_id": int(part.max())})
    meta = dict(dtype="uint16", vocab_size=100, eos_id=0, train_tokens=40, val_tokens=9, tokenizer_sha256="x")
    (v2 / "meta.json").write_text(json.dumps({**meta, "shards": shards}))
    data = open_tokens(v2)
    assert np.array_equal(np.asarray(data.train), np.arange(50, 90)) and data.max_id("train") == 89
    joined = open_tokens(f"{tmp_path / 'v1'},{v2}")
    assert np.array_equal(np.asarray(joined.train), np.arange(90)) and len(joined.val) == 19
    (v2 / "train-00001.bin").unlink()
    with pytest.raises(GrowLengthError, match="train-00001.bin is missing"):
        open_tokens(v2)


def test_doc_positions_restart_after_each_end_of_text():
    from growlength.tokens import doc_position_ids

    inputs = np.array([[7, 8, 0, 5, 6, 0, 0, 9], [1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 0, 3, 4, 5, 0]])
    assert doc_position_ids(inputs, eos_id=0).tolist() == [
        [0, 1, 2, 0, 1, 2, 0, 0],
        [0, 1, 2, 3, 4, 5, 6, 7],  # no boundary: the usual 0 .. T-1
        [0, 0, 1, 2, 0, 1, 2, 3],
    ]
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 4, size=(16, 64))  # eos (0) a quarter of the time
    positions = doc_position_ids(rows, eos_id=0)
    for row, pos in zip(rows, positions, strict=True):
        for t in range(64):
            start = max([0] + [i + 1 for i in range(t) if row[i] == 0])
            assert pos[t] == t - start
