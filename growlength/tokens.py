"""The token files and the re-chunking loader.

A prepared folder (see prepare.py) holds the train and val splits as shards, `train-00000.bin`, ...
(flat token ids, documents separated by the end-of-text id), listed with their token counts and sha256
in `meta.json`, plus `tokenizer.json`. Folders of the first format hold one `train.bin` and `val.bin`.
Each split is read as one stream: the shards memory-mapped and joined end to end (`Stream`); several
prepared folders with the same tokenizer join the same way. The loader reads the train stream as an
endless sequence of epochs and cuts it into windows at whatever seq_len each call asks for, with a
cursor counted in tokens, so a length change never drops or repeats a token:

    stream  t0 t1 t2 t3 t4 t5 t6 t7 t8 t9 ...
    step 1, seq_len 2, rows 2:  inputs [t0 t1][t2 t3]  targets [t1 t2][t3 t4]   cursor 0 -> 4
    step 2, seq_len 4, rows 1:  inputs [t4 t5 t6 t7]   targets [t5 t6 t7 t8]    cursor 4 -> 8

Every token after the first is a target exactly once per epoch. Shuffling permutes fixed-size blocks
of `block_tokens` of the whole stream once per epoch (seeded by seed and epoch), so the order never
depends on seq_len or on how the stream is cut into shards.

Read as one window, a step's rows would be neighbours (64 rows of 32 tokens: one scene of one play).
With `lanes` the rows are dealt round robin from that many far-apart regions of the stream instead, so
a step of short rows is as varied as a batch of shuffled samples; each lane still reads front to back,
so the count of every token stays exact and resumable (a cursor per lane).

Shapes (docs/glossary.md): B rows, T positions, R a step's rows over all ranks, r this rank's.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from growlength.errors import GrowLengthError

META_KEYS = ("dtype", "vocab_size", "eos_id", "train_tokens", "val_tokens", "tokenizer_sha256")
SPLITS = ("train", "val")


class Stream:
    """Token arrays joined end to end, read like one 1-D array: len(), an index, a slice [a:b].

    A slice crossing from one shard into the next is copied out of both; within a shard it is a view."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = [p for p in parts if len(p)]
        self.dtype = parts[0].dtype
        self.ends = np.cumsum([len(p) for p in self.parts], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("a Stream is sliced with step 1 only")
            return self._read(start, max(0, stop - start))
        index = key + len(self) if key < 0 else key
        if not 0 <= index < len(self):
            raise IndexError(f"index {key} out of a stream of {len(self)} tokens")
        return self._read(index, 1)[0]

    def _read(self, start: int, n: int) -> np.ndarray:
        pieces = []
        while n > 0:
            part = int(np.searchsorted(self.ends, start, side="right"))
            offset = start - (int(self.ends[part - 1]) if part else 0)
            piece = self.parts[part][offset : offset + n]
            pieces.append(piece)
            start, n = start + len(piece), n - len(piece)
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=self.dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=self.dtype)
        return whole if dtype is None else whole.astype(dtype)

    def max(self) -> int:
        return max(int(p.max()) for p in self.parts)

    def take(self, index: np.ndarray) -> np.ndarray:
        """The tokens at any array of indices (each shard read once, with its own indices)."""
        part = np.searchsorted(self.ends, index, side="right")
        out = np.empty(index.shape, dtype=self.dtype)
        for p in np.unique(part):
            mask = part == p
            out[mask] = self.parts[p][index[mask] - (int(self.ends[p - 1]) if p else 0)]
        return out


def gather(tokens: np.ndarray | Stream, index: np.ndarray) -> np.ndarray:
    """tokens[index] as int64, for an array, a memory map or a Stream of shards."""
    picked = tokens.take(index) if isinstance(tokens, Stream) else np.asarray(tokens)[index]
    return picked.astype(np.int64)


def indices_of(tokens: np.ndarray | Stream, value: int) -> np.ndarray:
    """Where `value` occurs in a token array or stream, one shard at a time (never the whole in memory)."""
    parts = tokens.parts if isinstance(tokens, Stream) else [tokens]
    found, offset = [], 0
    for part in parts:
        found.append(np.flatnonzero(np.asarray(part) == value) + offset)
        offset += len(part)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class TokenData:
    """One or more prepared folders: train and val token streams (memory-mapped) and their meta."""

    path: Path
    train: np.ndarray | Stream
    val: np.ndarray | Stream
    meta: dict

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def max_id(self, split: str) -> int:
        """The largest token id of a split: from meta.json where prepare recorded it, else read."""
        shards = self.meta.get("shards", {}).get(split)
        if shards and all("max_id" in s for s in shards):
            return max(int(s["max_id"]) for s in shards)
        tokens = self.train if split == "train" else self.val
        return int(tokens.max()) if len(tokens) else 0


def open_tokens(path: str | Path) -> TokenData:
    """Open a prepared folder, or several given as 'a,b,c' (one stream each for train and val, in that
    order; their tokenizers must be the same file), checking meta.json against the token files."""
    folders = [Path(p) for p in str(path).split(",")] if not Path(path).is_dir() else [Path(path)]
    opened = [_open_folder(f) for f in folders]
    first = opened[0]
    for other in opened[1:]:
        for key in ("tokenizer_sha256", "dtype", "eos_id"):
            if other.meta[key] != first.meta[key]:
                raise GrowLengthError(
                    f"{other.path} and {first.path} differ in {key} ({other.meta[key]} vs {first.meta[key]}): "
                    "folders read as one stream must be prepared with the same tokenizer (--tokenizer)"
                )
    if len(opened) == 1:
        return first
    meta = {**first.meta, "folders": [str(d.path) for d in opened]}
    meta.pop("shards", None)
    for split in SPLITS:
        meta[f"{split}_tokens"] = sum(int(d.meta[f"{split}_tokens"]) for d in opened)
    train = _join([d.train for d in opened])
    val = _join([d.val for d in opened])
    return TokenData(path=first.path, train=train, val=val, meta=meta)


def _open_folder(path: Path) -> TokenData:
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise GrowLengthError(f"no meta.json in {path}: run `growlength prepare --out {path}` first")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GrowLengthError(f"{meta_path} is not valid JSON ({e}): prepare the data again") from None
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise GrowLengthError(f"{meta_path} lacks {missing}: prepare the data again")
    if meta["dtype"] not in ("uint16", "uint32"):
        raise GrowLengthError(f"{meta_path}: dtype {meta['dtype']!r} is not uint16 or uint32")
    if "shards" in meta:
        splits = {s: [(sh["file"], int(sh["tokens"])) for sh in meta["shards"][s]] for s in SPLITS}
    else:  # format 1: one file per split
        splits = {s: [(f"{s}.bin", int(meta[f"{s}_tokens"]))] for s in SPLITS}
    streams = {}
    for split, shards in splits.items():
        parts = [_open_stream(path / name, meta["dtype"], n) for name, n in shards]
        if sum(map(len, parts)) != int(meta[f"{split}_tokens"]):
            raise GrowLengthError(f"{meta_path}: the {split} shards do not add up to {split}_tokens")
        streams[split] = _join(parts)
    return TokenData(path=path, train=streams["train"], val=streams["val"], meta=meta)


def _join(parts: list) -> np.ndarray | Stream:
    """One array as it is; several as a Stream (shards of a Stream are joined flat)."""
    flat = [p for part in parts for p in (part.parts if isinstance(part, Stream) else [part])]
    nonempty = [p for p in flat if len(p)]
    if len(nonempty) <= 1:
        return nonempty[0] if nonempty else flat[0]
    return Stream(nonempty)


def _open_stream(path: Path, dtype: str, n_tokens: int) -> np.ndarray:
    if not path.is_file():
        raise GrowLengthError(f"token file {path} is missing: prepare the data again")
    itemsize = np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size != n_tokens * itemsize:
        raise GrowLengthError(
            f"token file {path} has {size} bytes but meta.json says {n_tokens} {dtype} tokens "
            f"({n_tokens * itemsize} bytes): it is truncated or from another run; prepare the data again"
        )
    if n_tokens == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class Loader:
    """Windows of the shuffled train stream, at the length asked for, with a token cursor.

    `next_batch(seq_len, rows)` returns this rank's share of one optimizer step's rows, dealt round
    robin over `lanes`: each epoch of the stream is cut into `lanes` equal regions, lane j reads region j
    of epoch 0, then region j of epoch 1, ..., each lane front to back. So the rows of one step come from
    up to `lanes` far-apart places in the corpus, as in a loader of shuffled samples (Megatron's, a
    streaming dataset's), while every token is still read exactly once per epoch (the last
    N mod lanes tokens of an epoch are skipped) whatever the lengths asked for. Worked example, a stream
    of 8 tokens, 2 lanes (t0..t3 | t4..t7):
        step 1, seq_len 1, rows 2: inputs [t0][t4]   lanes' cursors 1, 1
        step 2, seq_len 2, rows 1: inputs [t1 t2]    lanes' cursors 3, 1   (next row: lane 1)
    With one lane a step covers stream positions [cursor, cursor + rows * seq_len). Rank r takes the
    r-th slice of the step's rows, so ranks see disjoint data and the union is the 1-process batch.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        seed: int,
        block_tokens: int,
        lanes: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(tokens) < 2:
            raise GrowLengthError("the train split holds fewer than 2 tokens: give more text")
        if lanes < 1:
            raise GrowLengthError(f"lanes must be at least 1, got {lanes}")
        self.tokens, self.seed, self.block_tokens = tokens, seed, block_tokens
        self.rank, self.world_size = rank, world_size
        # each lane at least a shuffle block long, so a small corpus gets fewer lanes than asked
        self.lanes = max(1, min(lanes, len(tokens) // block_tokens))
        self.lane_len = len(tokens) // self.lanes
        self.lane_cursors = np.zeros(self.lanes, dtype=np.int64)
        self.next_lane = 0
        n_blocks = -(-len(tokens) // block_tokens)
        self._block_len = np.minimum(block_tokens, len(tokens) - np.arange(n_blocks) * block_tokens)
        self._epoch_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    @property
    def cursor(self) -> int:
        """Tokens read so far, all lanes together (skipped row tails included)."""
        return int(self.lane_cursors.sum())

    def next_batch(self, seq_len: int, rows: int, row_stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), each int64 of shape (rows // world_size, seq_len); the step takes
        row_stride tokens per row from its lane. A row_stride above seq_len skips the rest of each row
        (truncation)."""
        stride = row_stride or seq_len
        rank_rows = rows // self.world_size
        lane_R, nth_R = deal(rows, self.lanes, self.next_lane)
        mine = slice(self.rank * rank_rows, (self.rank + 1) * rank_rows)
        lane_r = lane_R[mine]
        start_r = self.lane_cursors[lane_r] + nth_R[mine] * stride
        rows_rT = self._rows(lane_r, start_r, seq_len + 1)
        self.lane_cursors += np.bincount(lane_R, minlength=self.lanes) * stride
        self.next_lane = (self.next_lane + rows) % self.lanes
        return rows_rT[:, :-1], rows_rT[:, 1:]

    def _rows(self, lane_r: np.ndarray, start_r: np.ndarray, n: int) -> np.ndarray:
        """Rows of n tokens (int64), each from `start_r` in its lane: one gather for the rows that are
        contiguous in the token array; the few that cross a block's or a lane's end (about one per
        block_tokens read) are read piece by piece."""
        first_r = self._index(self._in_stream(lane_r, start_r))
        last_r = self._index(self._in_stream(lane_r, start_r + n - 1))
        whole_r = last_r - first_r == n - 1
        rows_rT = np.empty((len(start_r), n), dtype=np.int64)
        rows_rT[whole_r] = gather(self.tokens, first_r[whole_r, None] + np.arange(n))
        for r in np.flatnonzero(~whole_r):
            rows_rT[r] = self._read_lane(int(lane_r[r]), int(start_r[r]), n)
        return rows_rT

    def _in_stream(self, lane: np.ndarray, at_lane: np.ndarray) -> np.ndarray:
        """Where position `at_lane` of a lane is in the endless stream: the lane's region of each epoch."""
        lap, offset = np.divmod(at_lane, self.lane_len)
        return lap * len(self.tokens) + lane * self.lane_len + offset

    def _index(self, at: np.ndarray) -> np.ndarray:
        """Indices into the token array of positions `at` of the endless shuffled stream."""
        epoch, offset = np.divmod(at, len(self.tokens))
        index = np.empty_like(at)
        for e in np.unique(epoch):
            mask = epoch == e
            order, starts = self._epoch(int(e))
            block = np.searchsorted(starts, offset[mask], side="right") - 1
            index[mask] = order[block] * self.block_tokens + offset[mask] - starts[block]
        return index

    def _read_lane(self, lane: int, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) of one lane, piece by piece."""
        pieces = []
        while n > 0:
            lap, offset = divmod(start, self.lane_len)
            take = min(n, self.lane_len - offset)
            pieces.append(self.read(lap * len(self.tokens) + lane * self.lane_len + offset, take))
            start, n = start + take, n - take
        return np.concatenate(pieces)

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) of the endless shuffled stream."""
        pieces, epoch_len = [], len(self.tokens)
        while n > 0:
            epoch, offset = divmod(start, epoch_len)
            order, starts = self._epoch(epoch)
            i = int(np.searchsorted(starts, offset, side="right")) - 1
            block, inner = int(order[i]), offset - int(starts[i])
            take = min(n, int(self._block_len[block]) - inner)
            begin = block * self.block_tokens + inner
            pieces.append(np.asarray(self.tokens[begin : begin + take]))
            start, n = start + take, n - take
        return np.concatenate(pieces)

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Block order of an epoch and where each block starts in that epoch's stream."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self._block_len))
            starts = np.concatenate([[0], np.cumsum(self._block_len[order])[:-1]])
            self._epoch_cache = (epoch, order, starts)
        return self._epoch_cache[1], self._epoch_cache[2]

    def state_dict(self) -> dict:
        return {
            "cursor": self.cursor,
            "seed": self.seed,
            "block_tokens": self.block_tokens,
            "n_tokens": len(self.tokens),
            "lanes": self.lanes,
            "lane_cursors": self.lane_cursors.tolist(),
            "next_lane": self.next_lane,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        state = {"lanes": 1, "lane_cursors": [state["cursor"]], "next_lane": 0, **state}  # before lanes
        for key in ("seed", "block_tokens", "n_tokens", "lanes"):
            if state[key] != mine[key]:
                fix = f"--lanes {state[key]}" if key == "lanes" else "the same data and seed"
                raise GrowLengthError(
                    f"the checkpoint's loader has {key}={state[key]} but this run has {mine[key]}: "
                    f"resume with {fix}"
                )
        self.lane_cursors = np.asarray(state["lane_cursors"], dtype=np.int64)
        self.next_lane = int(state["next_lane"])


def deal(rows: int, lanes: int, first_lane: int) -> tuple[np.ndarray, np.ndarray]:
    """Round robin: the lane of each of a step's rows and how many earlier rows of the step went to
    that lane. 5 rows over 3 lanes from lane 2:

    >>> [a.tolist() for a in deal(5, 3, 2)]
    [[2, 0, 1, 2, 0], [0, 0, 0, 1, 1]]
    """
    dealt_R = first_lane + np.arange(rows)
    lane_R = dealt_R % lanes
    return lane_R, dealt_R // lanes - (lane_R < first_lane)


def doc_position_ids(inputs_BT: np.ndarray, eos_id: int) -> np.ndarray:
    """Position ids that restart at each document of a packed row: a document starts at the row's
    first token and after each end-of-text token (which ends its own document). Given to a Hugging Face
    model as `position_ids`, they also keep attention inside each document (transformers reads packed
    rows from position ids that do not count up by one). With eos = 0:

        inputs    [7, 8, 0, 5, 6, 0, 0, 9]
        positions [0, 1, 2, 0, 1, 2, 0, 0]
    """
    _, T = inputs_BT.shape
    index_T = np.arange(T)
    starts_BT = np.zeros(inputs_BT.shape, dtype=bool)
    starts_BT[:, 0] = True
    starts_BT[:, 1:] = inputs_BT[:, :-1] == eos_id
    last_start_BT = np.maximum.accumulate(np.where(starts_BT, index_T, 0), axis=1)
    return index_T - last_start_BT


def eval_windows(val: np.ndarray, seq_len: int, eval_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The first eval_tokens // seq_len windows of the val stream: the same tokens at every length
    that divides eval_tokens."""
    n_rows = min(eval_tokens, len(val) - 1) // seq_len
    if n_rows == 0:
        raise GrowLengthError(
            f"the val split has {len(val)} tokens, too few for one window of {seq_len}: "
            "prepare with a larger --val-fraction or evaluate shorter lengths"
        )
    window = np.asarray(val[: n_rows * seq_len + 1]).astype(np.int64)
    return window[:-1].reshape(n_rows, seq_len), window[1:].reshape(n_rows, seq_len)
