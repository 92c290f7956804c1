"""`--objective mlm`: masked language modelling for encoders with rotary positions (ModernBERT through
transformers), through every length schedule: the paper's second open direction. BERT itself trained
90% of its steps at 128 and 10% at 512, by hand; GrowLength's schedules do that for any encoder.

Masking as the field does it (BERT; ModernBERT raises the rate to 30%): each token is chosen with
probability `rate`; a chosen token is replaced by the mask token 80% of the time, by a random token
10%, and kept 10%; the loss is the cross-entropy at the chosen tokens alone. Each part of a step is
masked from one draw for all its rows, seeded by the run's seed, the step and the part, each row taking
the draw at its index in the step (`mask_rows`), so a resumed run masks exactly as the uninterrupted
one, on any number of ranks and micro-batches (not under `--batch-policy megatron`, whose rows are cut
per micro-batch); an evaluation masks each window of a length the same way for every model, whatever its
micro-batch size or number of ranks (`mask_windows`).

The mask and padding tokens are the two ids after the tokenizer's (the model's embedding is padded
to hold them: ModernBERT's padding row never trains, so it cannot be the end-of-text token);
`growlength export` adds them to the tokenizer as `<|mask|>` and `<|pad|>`.
"""

import numpy as np
import torch
import torch.nn.functional as F

MASK_TOKEN, PAD_TOKEN = "<|mask|>", "<|pad|>"
_EVAL_BLOCK_TOKENS = 65_536  # an evaluation masks its windows in blocks of about this many tokens


def mask_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded by the keys (seed, step, part): the same keys, the same mask."""
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def mask_tokens(
    ids_BT: torch.Tensor, *, rate: float, mask_id: int, vocab_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of an MLM step: labels are the chosen tokens' ids and -100 elsewhere; inputs
    have 80% of the chosen tokens replaced by mask_id, 10% by a random id below vocab_size, 10% kept."""
    draw_BT = torch.rand(ids_BT.shape, generator=generator)
    random_ids_BT = torch.randint(0, vocab_size, ids_BT.shape, generator=generator)
    return _masked(ids_BT, draw_BT, random_ids_BT, rate=rate, mask_id=mask_id)


def mask_rows(
    ids_BT: torch.Tensor, *keys: int, first_row: int, rows: int, rate: float, mask_id: int, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """mask_tokens for rows first_row .. first_row + len(ids_BT) of a part of a step that has `rows`
    rows in all (over every rank): the whole part's draws come from one generator seeded by the keys
    (seed, step, part) and each slice takes its own rows of them, so a row masks the same way however
    the step is split into micro-batches and over ranks, and a resume on another number of ranks stays
    exact. Every rank draws the whole part (two numbers a token: a few ms at 512K tokens).

    >>> ids = torch.arange(64).view(4, 16)
    >>> whole = mask_rows(ids, 0, 3, first_row=0, rows=4, rate=0.3, mask_id=99, vocab_size=64)
    >>> half = mask_rows(ids[2:], 0, 3, first_row=2, rows=4, rate=0.3, mask_id=99, vocab_size=64)
    >>> bool((whole[0][2:] == half[0]).all() and (whole[1][2:] == half[1]).all())
    True
    """
    generator, shape = mask_generator(*keys), (rows, ids_BT.shape[1])
    mine = slice(first_row, first_row + len(ids_BT))
    draw_BT = torch.rand(shape, generator=generator)[mine]
    random_ids_BT = torch.randint(0, vocab_size, shape, generator=generator)[mine]
    return _masked(ids_BT, draw_BT, random_ids_BT, rate=rate, mask_id=mask_id)


def mask_windows(
    ids_BT: torch.Tensor, *keys: int, first_row: int, rate: float, mask_id: int, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """mask_tokens for windows first_row .. first_row + len(ids_BT) of an evaluation: the windows are
    masked in blocks of about 65,536 tokens, block b from one draw seeded by (*keys, b), so a window masks
    the same way whatever the size of the pass it comes in and whichever rank scores it.

    >>> ids = torch.arange(4096).view(32, 128)
    >>> whole = mask_windows(ids, 0, 128, first_row=0, rate=0.15, mask_id=9999, vocab_size=4096)
    >>> part = mask_windows(ids[5:9], 0, 128, first_row=5, rate=0.15, mask_id=9999, vocab_size=4096)
    >>> bool((whole[0][5:9] == part[0]).all() and (whole[1][5:9] == part[1]).all())
    True
    """
    block_rows = max(1, _EVAL_BLOCK_TOKENS // ids_BT.shape[1])
    inputs, labels = [], []
    row, end = first_row, first_row + len(ids_BT)
    while row < end:
        block, offset = divmod(row, block_rows)
        take = min(block_rows - offset, end - row)
        rows_BT = ids_BT[row - first_row : row - first_row + take]
        x_BT, y_BT = mask_rows(
            rows_BT,
            *keys,
            block,
            first_row=offset,
            rows=block_rows,
            rate=rate,
            mask_id=mask_id,
            vocab_size=vocab_size,
        )
        inputs.append(x_BT)
        labels.append(y_BT)
        row += take
    return torch.cat(inputs), torch.cat(labels)


def _masked(ids_BT, draw_BT, random_ids_BT, *, rate: float, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    chosen_BT = draw_BT < rate
    labels_BT = torch.where(chosen_BT, ids_BT, torch.full_like(ids_BT, -100))
    # within the chosen, the same draw decides: the first 80% of [0, rate) masks, the next 10% randomises
    masked_BT = draw_BT < 0.8 * rate
    randomised_BT = chosen_BT & ~masked_BT & (draw_BT < 0.9 * rate)
    inputs_BT = torch.where(masked_BT, torch.full_like(ids_BT, mask_id), ids_BT)
    inputs_BT = torch.where(randomised_BT, random_ids_BT, inputs_BT)
    return inputs_BT, labels_BT


def mlm_token_losses(model, inputs_BT: torch.Tensor, labels_BT: torch.Tensor) -> torch.Tensor:
    """Cross-entropy at every position (0 where the label is -100), in fp32, shape (B, T)."""
    logits_BTV = model(input_ids=inputs_BT).logits
    losses_N = F.cross_entropy(
        logits_BTV.float().flatten(0, 1), labels_BT.flatten(), ignore_index=-100, reduction="none"
    )
    return losses_N.view_as(labels_BT)
