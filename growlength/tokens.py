"""The token file and the re-chunking loader.

On disk a prepared folder holds `train.bin` and `val.bin` (flat token ids, documents separated by the
end-of-text id), `meta.json` and `tokenizer.json`. The loader reads the train stream as an endless
sequence of epochs and cuts it into windows at whatever seq_len each call asks for, with a cursor
counted in tokens, so a length change never drops or repeats a token:

    stream  t0 t1 t2 t3 t4 t5 t6 t7 t8 t9 ...
    step 1, seq_len 2, rows 2:  inputs [t0 t1][t2 t3]  targets [t1 t2][t3 t4]   cursor 0 -> 4
    step 2, seq_len 4, rows 1:  inputs [t4 t5 t6 t7]   targets [t5 t6 t7 t8]    cursor 4 -> 8

Every token after the first is a target exactly once per epoch. Shuffling permutes fixed-size blocks
of `block_tokens` once per epoch (seeded by seed and epoch), so the order never depends on seq_len.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from growlength.errors import GrowLengthError

META_KEYS = ("dtype", "vocab_size", "eos_id", "train_tokens", "val_tokens", "tokenizer_sha256")


@dataclass(frozen=True)
class TokenData:
    """A prepared folder: train and val token streams (memory-mapped) and their meta."""

    path: Path
    train: np.ndarray
    val: np.ndarray
    meta: dict

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])


def open_tokens(path: str | Path) -> TokenData:
    """Open a prepared folder, checking meta.json against the token files before anything is read."""
    path = Path(path)
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
    train = _open_stream(path / "train.bin", meta["dtype"], int(meta["train_tokens"]))
    val = _open_stream(path / "val.bin", meta["dtype"], int(meta["val_tokens"]))
    return TokenData(path=path, train=train, val=val, meta=meta)


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


def write_stream(path: Path, ids: np.ndarray) -> None:
    ids.tofile(path)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Loader:
    """Windows of the shuffled train stream, at the length asked for, with a token cursor.

    `next_batch(seq_len, rows)` returns this rank's share of one optimizer step's rows: the step covers
    stream positions [cursor, cursor + rows * seq_len) for all ranks together and rank r takes the
    r-th slice of rows, so ranks see disjoint data and the union is exactly the 1-process batch.
    """

    def __init__(self, tokens: np.ndarray, *, seed: int, block_tokens: int, rank: int = 0, world_size: int = 1):
        if len(tokens) < 2:
            raise GrowLengthError("the train split holds fewer than 2 tokens: give more text")
        self.tokens, self.seed, self.block_tokens = tokens, seed, block_tokens
        self.rank, self.world_size = rank, world_size
        self.cursor = 0
        n_blocks = -(-len(tokens) // block_tokens)
        self._block_len = np.minimum(block_tokens, len(tokens) - np.arange(n_blocks) * block_tokens)
        self._epoch_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def next_batch(self, seq_len: int, rows: int, row_stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), each int64 of shape (rows // world_size, seq_len); advances the cursor
        by rows * row_stride. A row_stride above seq_len skips the rest of each row (truncation)."""
        stride = row_stride or seq_len
        rank_rows = rows // self.world_size
        start = self.cursor + self.rank * rank_rows * stride
        window = self.read(start, rank_rows * stride + 1).astype(np.int64)
        self.cursor += rows * stride
        if stride == seq_len:
            return window[:-1].reshape(rank_rows, seq_len), window[1:].reshape(rank_rows, seq_len)
        starts_R1 = (np.arange(rank_rows) * stride)[:, None]
        offsets_1T = np.arange(seq_len)[None, :]
        return window[starts_R1 + offsets_1T], window[starts_R1 + offsets_1T + 1]

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
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "block_tokens", "n_tokens"):
            if state[key] != mine[key]:
                raise GrowLengthError(
                    f"the checkpoint's loader has {key}={state[key]} but this run has {mine[key]}: "
                    "resume with the same data and seed"
                )
        self.cursor = int(state["cursor"])


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
