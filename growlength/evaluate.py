"""Loss and perplexity on the held-out split at many lengths.

Each length scores the same first `eval_tokens` val tokens (for every length that divides it), cut
into windows of that length; the loss is the mean over all target tokens. Lengths beyond the longest
trained one measure direct RoPE extrapolation.

A checkpoint's evaluation also gives the loss by position within the window, over buckets of positions
(`position_buckets`): a model trained mostly short could be good early in a window and worse late in
it, which the mean over the window hides. Position p is the p-th token predicted, from p tokens of
context; the target length is always a bucket's end, so what lies beyond it is a bucket of its own.
"""

import contextlib
import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from growlength import dist
from growlength.errors import GrowLengthError
from growlength.loss import lm_loss
from growlength.mlm import mask_windows, mlm_token_losses
from growlength.tokens import eval_windows


def autocast_context(device):
    """bf16 autocast on CUDA; on the CPU nothing (fp32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def val_loss(
    model,
    val,
    seq_len: int,
    *,
    eval_tokens: int,
    micro_batch_tokens: int,
    device,
    autocast,
    objective: str = "clm",
) -> float:
    """Mean loss over the first eval_tokens val tokens in windows of seq_len (for mlm, at the tokens
    each window of this length always has masked). Under torchrun the passes are dealt over the
    ranks (pass k to rank k mod ranks) and their sums added up; every rank runs as many passes (one
    may score nothing in its last), since an FSDP forward is a collective."""
    passes = _passes(val, seq_len, eval_tokens, micro_batch_tokens)
    rank, ranks = dist.rank_and_size()
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for k in range(rank, -(-len(passes) // ranks) * ranks, ranks):
        first_row, x, y = passes[k % len(passes)]
        scored = k < len(passes)
        with autocast():
            if objective == "clm":  # the mean through lm_loss: the head's bounded logits where it has them
                total += lm_loss(model, x.to(device), y.to(device)).double().cpu() * y.numel() * scored
                count += y.numel() * scored
            else:
                losses_BT, scored_BT = _token_losses(model, x, y, seq_len, first_row, objective, device)
                total += losses_BT.sum() * scored
                count += int(scored_BT.sum()) * scored
    model.train(was_training)
    return dist.sum_over_ranks(total.item()) / max(1.0, dist.sum_over_ranks(float(count)))


@torch.no_grad()
def loss_by_position(
    model,
    val,
    seq_len: int,
    *,
    eval_tokens: int,
    micro_batch_tokens: int,
    device,
    autocast,
    objective: str = "clm",
):
    """The summed loss and the number of scored tokens at each position 1 .. seq_len over the same
    windows as val_loss (one process), as two float64 arrays of seq_len: sums.sum() / counts.sum() is
    val_loss; for clm every window scores each position once, for mlm only its masked tokens."""
    was_training = model.training
    model.eval()
    sums_T = torch.zeros(seq_len, dtype=torch.float64)
    counts_T = torch.zeros(seq_len, dtype=torch.float64)
    for first_row, x, y in _passes(val, seq_len, eval_tokens, micro_batch_tokens):
        with autocast():
            losses_BT, scored_BT = _token_losses(model, x, y, seq_len, first_row, objective, device)
        sums_T += losses_BT.sum(0)
        counts_T += scored_BT.double().sum(0)
    model.train(was_training)
    return sums_T.numpy(), counts_T.numpy()


def _passes(
    val, seq_len: int, eval_tokens: int, micro_batch_tokens: int
) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """The eval windows of seq_len, in passes of at most micro_batch_tokens: (index of the pass's first
    window, inputs, targets) each."""
    inputs, targets = eval_windows(val, seq_len, eval_tokens)
    rows = max(1, micro_batch_tokens // seq_len)
    return [
        (i, torch.from_numpy(inputs[i : i + rows]), torch.from_numpy(targets[i : i + rows]))
        for i in range(0, len(inputs), rows)
    ]


def _token_losses(model, x_BT, y_BT, seq_len: int, first_row: int, objective: str, device):
    """The pass's loss at each token (float64, on the CPU, 0 where nothing is scored) and which tokens
    are scored: every target for clm; for mlm the tokens each window of seq_len always has masked (15%,
    window first_row + i for row i: the same for every model and every evaluation)."""
    if objective == "mlm":
        mask_id = model.config.mask_token_id  # the first id after the tokenizer's
        x_BT, y_BT = mask_windows(
            x_BT, 0, seq_len, first_row=first_row, rate=0.15, mask_id=mask_id, vocab_size=mask_id
        )
        losses_BT = mlm_token_losses(model, x_BT.to(device), y_BT.to(device))
        return losses_BT.double().cpu(), y_BT != -100
    logits_BTV = model(input_ids=x_BT.to(device), use_cache=False).logits
    losses_N = F.cross_entropy(logits_BTV.float().flatten(0, 1), y_BT.to(device).flatten(), reduction="none")
    return losses_N.view_as(y_BT).double().cpu(), torch.ones_like(y_BT, dtype=torch.bool)


def position_buckets(seq_len: int, target_len: int) -> list[tuple[int, int]]:
    """Positions 1 .. seq_len in buckets (first, last), ending at 64, 256, 1024, ... (x4), at the target
    length and at seq_len.

    >>> position_buckets(4096, 2048)
    [(1, 64), (65, 256), (257, 1024), (1025, 2048), (2049, 4096)]
    """
    ends = {64 * 4**k for k in range(16) if 64 * 4**k < seq_len}
    ends |= {target_len} if target_len < seq_len else set()
    ends = [*sorted(ends), seq_len]
    return list(zip([1] + [e + 1 for e in ends[:-1]], ends, strict=True))


def bucket_means(sums_T, counts_T, buckets: list[tuple[int, int]]) -> list[dict]:
    """The mean loss over the scored tokens of each bucket of positions (1-based, inclusive)."""
    return [
        {"positions": [a, b], "loss": float(sums_T[a - 1 : b].sum() / max(1.0, counts_T[a - 1 : b].sum()))}
        for a, b in buckets
    ]


def val_losses(model, val, lengths, **kwargs) -> dict[int, float]:
    return {seq_len: val_loss(model, val, seq_len, **kwargs) for seq_len in sorted(set(lengths))}


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


ROPE_MODES = ("none", "linear", "dynamic", "yarn")


def rope_scaled(model_cfg, mode: str, factor: float, trained_len: int):
    """A copy of model_cfg whose RoPE parameters (Hugging Face's own `rope_type`s) stretch the trained
    length by `factor`: linear position interpolation, dynamic NTK (which only acts beyond the trained
    length) or YaRN. `none` returns model_cfg itself: direct extrapolation."""
    if mode not in ROPE_MODES:
        raise GrowLengthError(f"unknown RoPE scaling {mode!r}: choose {', '.join(ROPE_MODES)}")
    if mode == "none":
        return model_cfg
    if not factor >= 1.0:
        raise GrowLengthError(f"--rope-factor must be at least 1, got {factor}")
    params = getattr(model_cfg, "rope_parameters", None)
    if not isinstance(params, dict) or "rope_theta" not in params:
        raise GrowLengthError(f"the model ({model_cfg.model_type}) has no single RoPE to scale")
    scaled = copy.deepcopy(model_cfg)
    params = {**params, "rope_type": mode, "factor": float(factor)}
    if mode in ("dynamic", "yarn"):
        params["original_max_position_embeddings"] = trained_len
    if mode == "dynamic":
        scaled.max_position_embeddings = trained_len  # dynamic NTK rescales past this length
    scaled.rope_parameters = params
    return scaled


def evaluate_checkpoint(
    ckpt: str | Path,
    lengths: list[int],
    *,
    data: str | None = None,
    eval_tokens: int | None = None,
    device: str = "auto",
    rope_scaling: tuple[str, ...] = ("none",),
    rope_factor: float | None = None,
) -> dict:
    """Per-length loss, perplexity and loss by position (`position_buckets`) of a checkpoint (or a run
    folder's newest one) on the val split, once per RoPE scaling mode. The default factor stretches the
    longest trained length to the longest length asked for."""
    from growlength.checkpoint import model_from_checkpoint, open_checkpoint
    from growlength.models import max_positions
    from growlength.preflight import device_for

    opened = open_checkpoint(ckpt, data)
    path, cfg, model_cfg, tokens = opened.path, opened.state["config"], opened.model_cfg, opened.data
    eval_tokens = eval_tokens or max(cfg["eval_tokens"], max(lengths))
    trained = opened.longest_trained
    factor = rope_factor or max(1.0, max(lengths) / trained)
    configs = {mode: rope_scaled(model_cfg, mode, factor, trained) for mode in rope_scaling}
    dev = device_for(device)
    limit = max_positions(model_cfg)
    rows = []
    for mode, scaled_cfg in configs.items():
        model = model_from_checkpoint(path, scaled_cfg, dev)
        for n in sorted(set(lengths)):
            sums_T, counts_T = loss_by_position(
                model,
                tokens.val,
                n,
                eval_tokens=eval_tokens,
                micro_batch_tokens=cfg["micro_batch_tokens"],
                device=dev,
                autocast=lambda: autocast_context(dev),
                objective=cfg.get("objective", "clm"),
            )
            loss = float(sums_T.sum() / max(1.0, counts_T.sum()))
            rows.append(
                {
                    "rope_scaling": mode,
                    "rope_factor": 1.0 if mode == "none" else factor,
                    "seq_len": n,
                    "loss": loss,
                    "ppl": perplexity(loss),
                    "beyond_trained": n > trained,
                    "beyond_max_positions": bool(limit and n > limit),
                    "loss_by_position": bucket_means(sums_T, counts_T, position_buckets(n, cfg["target_len"])),
                }
            )
    return {
        "checkpoint": str(path),
        "data": str(tokens.path),
        "eval_tokens": eval_tokens,
        "longest_trained": trained,
        "results": rows,
    }
