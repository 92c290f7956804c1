"""Dataset Decomposition (Pouransari et al. 2024, arXiv 2405.13226; apple/ml-dataset-decomposition) as a
data mode (`schedule: dd`): documents cut into power-of-two chunks, one bucket per length, one bucket
per optimizer step, and the Grow-P2 curriculum deciding which.

1. Decompose (`scripts/make_dd_buckets.py`, `get_binary`): each document, with its end-of-text, is
   cut front to back into chunks of 2^k + 1 tokens (a row of 2^k inputs and its shifted targets), k
   the largest that fits; a remainder shorter than the smallest bucket is dropped; where more than the
   largest bucket is left, k is drawn at random with odds 1:2:4:... from the largest to the smallest
   (so each bucket gets about equal tokens from long documents). No chunk crosses a document:
       a document of 1,000 tokens + eos, buckets 64..512: 512+1 | 256+1 | 128+1 | 64+1 | 37 dropped
2. Mix (`open_lm.patch`, RandomMix with `longest=True`; `scripts/get_dd_params.py`): training runs in
   8 cycles; in each, every bucket's share of the cycle's tokens equals its share of the data, and a
   step draws bucket k with odds tokens_k x c_k among the buckets not yet used up in this cycle, with
   Grow-P2 odds c = 32:16:8:4:2:1 from the shortest bucket. So each cycle starts short and ends long.
   Every step holds the same tokens (rows = tokens_per_step / 2^k), the same bucket on every rank.

Here the mix is the fluid form of that draw, a pure function of fraction within the cycle
(`bucket_odds`), and the draw is seeded by (seed, step): resume needs only the per-bucket cursors.

DD counts the cycles in batches, each of the same tokens: its cycles are counted in tokens. Under a
seconds budget, counting them in seconds would skew the mix toward the short buckets (their steps are
quicker, so the short-first part of each cycle gets more steps: six equal buckets to 8,192, the
shortest's tokens 2.9x cheaper, the longest's share falls from 17% to 11%, tests/test_buckets.py). So
there the cycles are counted in tokens (`token_fraction`) against the tokens the seconds are expected to
hold at the cycle's tokens/s (`cycle_tokens_per_s`, from each bucket's measured tokens/s), corrected by
how much slower the steps so far ran than the measurement said (the optimizer step, data, a busy
machine).
"""

import math

import numpy as np

from growlength.errors import GrowLengthError
from growlength.tokens import indices_of

CYCLES = 8


def decompose(doc_len: int, min_log2: int, max_log2: int, rng: np.random.Generator) -> list[int]:
    """The k of each chunk (2^k + 1 tokens) of a document of `doc_len` tokens, front to back.

    >>> decompose(1001, 6, 9, np.random.default_rng(0))  # 513 + 257 + 129 + 65 = 964; 37 dropped
    [9, 8, 7, 6]
    """
    odds = 2.0 ** np.arange(max_log2 + 1 - min_log2)
    odds /= odds.sum()
    ks, left = [], doc_len
    while left > 1:
        k = int(math.log2(left - 1))
        if k < min_log2:
            break
        if k > max_log2:
            k = int(rng.choice(np.arange(max_log2, min_log2 - 1, -1), p=odds))
        ks.append(k)
        left -= (1 << k) + 1
    return ks


def bucket_starts(
    tokens: np.ndarray, eos_id: int, min_log2: int, max_log2: int, seed: int
) -> dict[int, np.ndarray]:
    """Where each chunk of each bucket starts in the token stream: {k: int64 offsets}. Documents end at
    each eos (the eos is the document's last token); a tail after the last eos counts as a document."""
    ends = indices_of(tokens, eos_id) + 1
    if len(ends) == 0 or ends[-1] != len(tokens):
        ends = np.append(ends, len(tokens))
    starts = {k: [] for k in range(min_log2, max_log2 + 1)}
    begin = 0
    for doc, end in enumerate(ends):
        at = begin
        for k in decompose(int(end - begin), min_log2, max_log2, np.random.default_rng([seed, doc])):
            starts[k].append(at)
            at += (1 << k) + 1
        begin = int(end)
    return {k: np.asarray(v, dtype=np.int64) for k, v in starts.items()}


def grow_p2(n_buckets: int) -> list[int]:
    """Grow-P2 odds, shortest bucket first: 6 buckets -> [32, 16, 8, 4, 2, 1]."""
    return [2 ** (n_buckets - 1 - i) for i in range(n_buckets)]


def bucket_odds(u: float, shares: list[float], curriculum: list[int]) -> list[float]:
    """The odds of each bucket at fraction `u` of a cycle, when bucket i holds `shares[i]` of the
    cycle's tokens and is drawn with weight shares[i] * curriculum[i] until used up.

    Fluid form: while a set A of buckets is active, bucket i is used at rate w_i / W_A (W_A the sum of
    weights in A), so its used fraction is curriculum[i] * g, with dg/du = 1 / W_A; it runs out when
    g = 1 / curriculum[i]. Worked example, two equal buckets, odds 2:1: weights 1 and 0.5, W = 1.5;
    the short one runs out at g = 1/2, u = 0.75; after that only the long one is drawn:
        u < 0.75 -> [2/3, 1/3];  u >= 0.75 -> [0, 1]
    """
    weights = [s * c for s, c in zip(shares, curriculum, strict=True)]
    active = [i for i, w in enumerate(weights) if w > 0]
    g, at = 0.0, 0.0
    for i in sorted(active, key=lambda i: -curriculum[i]):
        total = sum(weights[j] for j in active)
        ends = at + (1.0 / curriculum[i] - g) * total
        if u < ends or len(active) == 1:
            return [weights[j] / total if j in active else 0.0 for j in range(len(shares))]
        g, at = 1.0 / curriculum[i], ends
        active.remove(i)
    raise AssertionError("unreachable: the last active bucket returns")


def dd_seq_len(fraction: float, step: int, *, seed: int, lengths: tuple[int, ...], shares: list[float]) -> int:
    """The length of the step's bucket: cycle position from fraction, then a draw seeded by the step
    (the same on every rank, the same after a resume). The end of the budget is the last cycle's end, not
    a new cycle's start: a seconds budget whose tokens overrun their estimate stays at the longest mix."""
    u = (min(fraction, 1.0 - 1e-12) * CYCLES) % 1.0
    odds = bucket_odds(u, shares, grow_p2(len(lengths)))
    return lengths[int(np.random.default_rng([seed, step]).choice(len(lengths), p=odds))]


def cycle_tokens_per_s(shares: list[float], tokens_per_s: list[float]) -> float:
    """Tokens/s over a whole cycle, where bucket i holds shares[i] of the cycle's tokens and trains at
    tokens_per_s[i]: the tokens over the sum of each bucket's seconds.

    >>> cycle_tokens_per_s([0.5, 0.5], [300.0, 100.0])  # 1 / (0.5 / 300 + 0.5 / 100)
    150.0
    """
    return 1.0 / sum(share / speed for share, speed in zip(shares, tokens_per_s, strict=True))


def token_fraction(
    tokens: int, *, seconds: float, planned_seconds: float, budget_seconds: float, tokens_per_s: float
) -> float:
    """The fraction of a seconds budget's expected tokens trained: tokens over budget_seconds x
    tokens_per_s, the speed scaled by planned_seconds / seconds (what the measured speeds predicted
    for the steps so far over what they took). Capped at 1.

    >>> token_fraction(1000, seconds=6.0, planned_seconds=4.0, budget_seconds=10.0, tokens_per_s=300.0)
    0.5
    """
    slower = seconds / planned_seconds if planned_seconds > 0 and seconds > 0 else 1.0
    return min(1.0, tokens * slower / (budget_seconds * tokens_per_s))


class BucketLoader:
    """Rows of one bucket per call: `next_batch(seq_len, rows)` takes the next `rows` chunks of bucket
    log2(seq_len) (this rank's slice of them), in an order shuffled per bucket and epoch. The state is
    a cursor per bucket, counted in chunks."""

    def __init__(self, tokens: np.ndarray, starts: dict[int, np.ndarray], *, seed: int, rank=0, world_size=1):
        empty = [1 << k for k, s in starts.items() if len(s) == 0]
        if empty:
            raise GrowLengthError(
                f"no document yields a chunk of {empty} tokens: the train split is too small for Dataset "
                "Decomposition at these lengths; give more text or a shorter target_len"
            )
        self.tokens, self.starts, self.seed = tokens, starts, seed
        self.rank, self.world_size = rank, world_size
        self.cursors = {k: 0 for k in starts}
        self._orders: dict[int, tuple[int, np.ndarray]] = {}  # bucket -> (epoch, its chunk order)

    def next_batch(self, seq_len: int, rows: int, row_stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        k = seq_len.bit_length() - 1
        if seq_len != 1 << k or k not in self.starts:
            raise GrowLengthError(
                f"no bucket of length {seq_len}: the buckets are {sorted(1 << k for k in self.starts)}"
            )
        rank_rows = rows // self.world_size
        first = self.cursors[k] + self.rank * rank_rows
        picks = [self._chunk(k, i) for i in range(first, first + rank_rows)]
        self.cursors[k] += rows
        chunks_RT1 = np.stack([np.asarray(self.tokens[s : s + seq_len + 1]) for s in picks]).astype(np.int64)
        return chunks_RT1[:, :-1], chunks_RT1[:, 1:]

    def _chunk(self, k: int, index: int) -> int:
        """Start of the index-th chunk of bucket k in the endless, per-epoch shuffled order."""
        epoch, i = divmod(index, len(self.starts[k]))
        if k not in self._orders or self._orders[k][0] != epoch:
            order = np.random.default_rng([self.seed, k, epoch]).permutation(len(self.starts[k]))
            self._orders[k] = (epoch, order)
        return int(self.starts[k][self._orders[k][1][i]])

    @property
    def cursor(self) -> int:
        """Tokens read so far (rows x length, over all buckets)."""
        return sum(n << k for k, n in self.cursors.items())

    def state_dict(self) -> dict:
        return {
            "cursors": {str(k): n for k, n in self.cursors.items()},
            "seed": self.seed,
            "chunks": {str(k): len(s) for k, s in self.starts.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        if state.get("chunks") != mine["chunks"] or state.get("seed") != self.seed:
            raise GrowLengthError(
                "the checkpoint's buckets differ from this run's (other data, seed or lengths): resume with "
                "the same data and seed"
            )
        self.cursors = {int(k): int(n) for k, n in state["cursors"].items()}
