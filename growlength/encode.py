"""Text -> token ids: the options that decide them, the val choice, the tokenizer, the worker pool.

- The val split is whole documents: a document goes to val when a seeded hash of its record id
  (source index, record index) falls below val_fraction, so the choice needs no second pass and does
  not depend on how the inputs are split between machines (--part) or workers.
- The tokenizer (a byte-level BPE, HF `tokenizers`) is trained on a seeded sample of at most
  tokenizer_sample characters of train documents (the ones with the smallest hash), so its cost does
  not grow with the corpus; or it is read from a file.
- Documents are encoded whole, in pieces of at most 1M characters cut at a line end, by worker
  processes; batches are cut by the reader alone and come back in order, so the output is the same
  bit for bit for any number of workers.
"""

import hashlib
import heapq
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from growlength.config import option
from growlength.errors import GrowLengthError
from growlength.readers import DEFAULT_GLOB, documents

EOS_TOKEN = "<|endoftext|>"
BATCH_CHARS = 1 << 20
PIECE_CHARS = 1 << 20


@dataclass(frozen=True, kw_only=True)
class PrepareOptions:
    """Everything that decides the output of `prepare` (a rerun with other options is refused); each
    field with help is a flag of `growlength prepare`."""

    vocab_size: int = option(4096, "size of the BPE tokenizer to train")
    tokenizer_sha256: str | None = None  # of --tokenizer, when one is given (not a flag)
    eos_token: str = option(EOS_TOKEN, "document separator token")
    val_fraction: float = option(0.05, "share of the documents held out")
    text_field: str = option("text", "the text field of .jsonl/.json/.csv/.parquet")
    glob: str = option(DEFAULT_GLOB, "files to read in folders")
    tokenizer_sample: int = option(50_000_000, "characters to train the tokenizer on (a seeded sample)")
    shard_tokens: int = option(100_000_000, "tokens per shard file")
    part: str = option("0/1", "I/N: read every N-th input file from the I-th (many machines)")
    seed: int = option(0, "seed of the val choice and the tokenizer's sample")

    def __post_init__(self):
        if not 0 < self.val_fraction < 1:
            raise GrowLengthError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("vocab_size", "shard_tokens", "tokenizer_sample"):
            if getattr(self, name) < 1:
                raise GrowLengthError(f"{name} must be positive, got {getattr(self, name)}")


def unit_hash(*key) -> float:
    """A seeded, uniform number in [0, 1) for a key: the same on every machine and in every run."""
    digest = hashlib.blake2b("/".join(map(str, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def is_val(seed: int, record_id: tuple[int, int], val_fraction: float) -> bool:
    return unit_hash("val", seed, *record_id) < val_fraction


# --- the tokenizer --------------------------------------------------------------------------------


def tokenizer_sample(sources: list, opts: PrepareOptions, with_val: bool = False) -> list[str]:
    """The train documents with the smallest seeded hash whose characters fit in opts.tokenizer_sample
    (a document longer than the whole budget is cut to it): a uniform sample in bounded memory."""
    heap: list[tuple[float, int, str]] = []  # max-heap by key, through negation
    chars = 0
    for record_id, text in tqdm(
        documents(sources, opts.text_field),
        desc="sample for tokenizer",
        unit="doc",
        mininterval=1.0,
        leave=False,
        disable=None,  # not on a terminal: no bar (the encode bar that follows reports the pass)
    ):
        if not text.strip() or (not with_val and is_val(opts.seed, record_id, opts.val_fraction)):
            continue
        key = unit_hash("sample", opts.seed, *record_id)
        if chars >= opts.tokenizer_sample and key > -heap[0][0]:
            continue
        text = text[: opts.tokenizer_sample]
        heapq.heappush(heap, (-key, len(heap), text))
        chars += len(text)
        while chars > opts.tokenizer_sample:  # the largest keys go: what stays is the smallest-key prefix
            chars -= len(heapq.heappop(heap)[2])
    return [text for _, _, text in sorted(heap, key=lambda item: -item[0])]


def new_tokenizer(sources: list, opts: PrepareOptions):
    """A tokenizer trained on the sample; a corpus whose every document is held out (one document, say:
    see _finish) is sampled whole."""
    sample = tokenizer_sample(sources, opts) or tokenizer_sample(sources, opts, with_val=True)
    if not sample:
        raise GrowLengthError("no text found in the inputs: every document is blank")
    return train_tokenizer(sample, opts.vocab_size)


def train_tokenizer(docs: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style) with one special token, the document separator."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 + 1:
        raise GrowLengthError(
            f"vocab_size must be at least 258 (256 bytes + separator + merges), got {vocab_size}"
        )
    if not docs:
        raise GrowLengthError("no train text to learn a tokenizer from: give more documents")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(docs, trainer=trainer)
    return tokenizer


def load_tokenizer(path: str | Path, eos_token: str = EOS_TOKEN):
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises a bare Exception on any bad file
        raise GrowLengthError(f"cannot read tokenizer {path}: {e}") from None
    if tokenizer.token_to_id(eos_token) is None:
        raise GrowLengthError(f"tokenizer {path} has no token {eos_token!r}: give the separator with --eos-token")
    return tokenizer


# --- encoding -------------------------------------------------------------------------------------


def pieces(text: str, max_chars: int = PIECE_CHARS) -> list[str]:
    """The text cut into pieces of at most max_chars, each ending at a line end where one exists:
    a document of any size is encoded in bounded memory, the same way by every worker."""
    out, start = [], 0
    while len(text) - start > max_chars:
        cut = text.rfind("\n", start, start + max_chars) + 1
        cut = cut if cut > start else start + max_chars
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


_worker_tokenizer = None


def _start_worker(tokenizer_json: str) -> None:
    """In each worker process: one thread (the processes are the parallelism), the tokenizer."""
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)


def encode(texts: list[str], eos_id: int, tokenizer=None) -> tuple[np.ndarray, np.ndarray]:
    """(all ids, tokens per document) of the texts, each document followed by its separator: ids are
    uint32 here and narrowed by the writer."""
    tokenizer = tokenizer or _worker_tokenizer
    split = [pieces(t) for t in texts]
    flat = [p for doc in split for p in doc]
    encoded = iter(tokenizer.encode_batch_fast(flat, add_special_tokens=False))
    eos = np.asarray([eos_id], dtype=np.uint32)
    arrays, lengths = [], []
    for doc in split:
        ids = [np.asarray(next(encoded).ids, dtype=np.uint32) for _ in doc] + [eos]
        arrays += ids
        lengths.append(sum(map(len, ids)))
    ids = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint32)
    return ids, np.asarray(lengths, dtype=np.int64)


@dataclass
class Batch:
    texts: list[str]
    val: list[bool]
    chars: int
    end: tuple[int, int]  # the id of the record after the batch's last


def batches(sources: list, opts: PrepareOptions, start: tuple[int, int]) -> Iterator[Batch]:
    """Non-blank documents in batches of about BATCH_CHARS characters, cut by the reader alone."""
    batch = Batch([], [], 0, start)
    for record_id, text in documents(sources, opts.text_field, start):
        batch.end = (record_id[0], record_id[1] + 1)
        if text.strip():
            batch.texts.append(text)
            batch.val.append(is_val(opts.seed, record_id, opts.val_fraction))
            batch.chars += len(text)
        if batch.chars >= BATCH_CHARS:
            yield batch
            batch = Batch([], [], 0, batch.end)
    if batch.texts or batch.end != start:
        yield batch


def encoded(batches: Iterator[Batch], tokenizer, eos_id: int, workers: int) -> Iterator[tuple]:
    """(batch, ids, lengths) in input order; with workers > 1, at most 2 x workers batches in flight."""
    if workers <= 1:
        for batch in batches:
            yield (batch, *encode(batch.texts, eos_id, tokenizer))
        return
    context = get_context("spawn")  # a fresh interpreter: no inherited threads (torch, the tokenizer's)
    with ProcessPoolExecutor(workers, context, initializer=_start_worker, initargs=(tokenizer.to_str(),)) as pool:
        flight: deque = deque()
        for batch in batches:
            flight.append((batch, pool.submit(encode, batch.texts, eos_id)))
            if len(flight) >= 2 * workers:
                done, future = flight.popleft()
                yield (done, *future.result())
        while flight:
            done, future = flight.popleft()
            yield (done, *future.result())
