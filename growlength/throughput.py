"""Tokens/s of a model's training passes at each step shape: measured on random tokens, or read from a
saved `growlength profile --out` JSON. What `--schedule auto` plans from and `growlength profile` reports;
a leaf that imports no part of the loop.

Steps at the different lengths are interleaved (one at each length, round after round, in alternating
order), so a slow spell of a shared machine lands on every length alike.

Shapes (docs/glossary.md): B rows, T positions.
"""

import json
import time
from pathlib import Path

import torch

from growlength import dist
from growlength.errors import GrowLengthError
from growlength.loss import lm_loss


def measure_tokens_per_s(
    model, shapes, device, autocast, rounds: int = 2, packed: bool = False
) -> dict[int, float]:
    """Tokens/s of one rank's forward and backward passes at each step shape, on random tokens, leaving
    the weights as they are (gradients dropped, no optimizer step): what `--schedule auto` plans from.
    An untimed round first (kernels, allocator), then `rounds` interleaved ones; the fastest of each.
    `packed`: every row holds two documents (position ids restart mid-row), the worst case for --doc-mask."""
    vocab = dist.unwrap(model).config.vocab_size
    generator = torch.Generator().manual_seed(0)  # the run's own RNG streams are left alone
    fastest: dict[int, float] = {}
    for r in range(rounds + 1):
        for shape in shapes if r % 2 == 0 else shapes[::-1]:
            ids = torch.randint(0, vocab, (shape.micro_rows * shape.accum, shape.seq_len + 1), generator=generator)
            ids = ids.to(device)
            position_ids = _two_documents(shape, device) if packed else None
            started = time.perf_counter()
            forward_backward(model, ids, shape, autocast, position_ids)
            model.zero_grad(set_to_none=True)
            elapsed = sync_time(device, started)
            if r > 0:
                fastest[shape.seq_len] = min(fastest.get(shape.seq_len, float("inf")), elapsed)
    return {s.seq_len: s.micro_rows * s.accum * s.seq_len / fastest[s.seq_len] for s in shapes}


def forward_backward(model, ids_BT: torch.Tensor, shape, autocast, positions_BT=None) -> None:
    """Forward and backward over a step's micro-batches of these rows (each row seq_len + 1 tokens),
    each loss weighted by its share of the rows, as the training step does."""
    for micro in range(shape.accum):
        rows = ids_BT[micro * shape.micro_rows : (micro + 1) * shape.micro_rows]
        with autocast():
            loss = lm_loss(model, rows[:, :-1], rows[:, 1:], positions_BT) * len(rows) / len(ids_BT)
        loss.backward()


def _two_documents(shape, device) -> torch.Tensor:
    """Position ids of rows holding two documents of half the length each: [0 .. h-1, 0 .. T-h-1], one
    row that transformers expands to every row of a micro-batch (a shorter last one too)."""
    half = shape.seq_len // 2
    positions_T = torch.cat([torch.arange(half), torch.arange(shape.seq_len - half)])
    return positions_T.unsqueeze(0).to(device)


def read_throughput(path: str | Path, lengths: list[int]) -> dict[int, float]:
    """tokens/s at each of `lengths` from a saved `growlength profile --out` JSON."""
    try:
        rows = json.loads(Path(path).read_text())["lengths"]
        table = {int(r["seq_len"]): float(r["tokens_per_s"]) for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GrowLengthError(f"plan_from {path}: not a `growlength profile --out` JSON ({e})") from None
    missing = [n for n in lengths if n not in table]
    if missing:
        raise GrowLengthError(
            f"plan_from {path} has no tokens/s at {missing}: profile with --lengths {','.join(map(str, lengths))}"
        )
    return {n: table[n] for n in lengths}


def sync_time(device, started: float) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started
