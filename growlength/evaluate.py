"""Loss and perplexity on the held-out split at many lengths.

Each length scores the same first `eval_tokens` val tokens (for every length that divides it), cut
into windows of that length; the loss is the mean over all target tokens. Lengths beyond the longest
trained one measure direct RoPE extrapolation.
"""

import contextlib
import copy
import math
from pathlib import Path

import torch

from growlength import dist
from growlength.errors import GrowLengthError
from growlength.loss import lm_loss
from growlength.tokens import eval_windows


def autocast_context(device):
    """bf16 autocast on CUDA; on the CPU nothing (fp32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def val_loss(model, val, seq_len: int, *, eval_tokens: int, micro_batch_tokens: int, device, autocast) -> float:
    """Mean loss over the first eval_tokens val tokens in windows of seq_len. Under torchrun the passes
    are dealt over the ranks (pass k to rank k mod ranks) and their sums added up; every rank runs as
    many passes (one may score nothing in its last), since an FSDP forward is a collective."""
    inputs, targets = eval_windows(val, seq_len, eval_tokens)
    rows_per_pass = max(1, micro_batch_tokens // seq_len)
    starts = range(0, len(inputs), rows_per_pass)
    rank, ranks = dist.rank_and_size()
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for k in range(rank, -(-len(starts) // ranks) * ranks, ranks):
        start = starts[k % len(starts)]
        x = torch.from_numpy(inputs[start : start + rows_per_pass]).to(device)
        y = torch.from_numpy(targets[start : start + rows_per_pass]).to(device)
        with autocast():
            loss = lm_loss(model, x, y)
        total += loss.double() * y.numel() * (k < len(starts))
    model.train(was_training)
    return dist.sum_over_ranks(total.item()) / targets.size


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
    """Per-length loss and perplexity of a checkpoint (or a run folder's newest one) on the val split,
    once per RoPE scaling mode. The default factor stretches the longest trained length to the longest
    length asked for."""
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
        losses = val_losses(
            model_from_checkpoint(path, scaled_cfg, dev),
            tokens.val,
            lengths,
            eval_tokens=eval_tokens,
            micro_batch_tokens=cfg["micro_batch_tokens"],
            device=dev,
            autocast=lambda: autocast_context(dev),
        )
        rows += [
            {
                "rope_scaling": mode,
                "rope_factor": 1.0 if mode == "none" else factor,
                "seq_len": n,
                "loss": loss,
                "ppl": perplexity(loss),
                "beyond_trained": n > trained,
                "beyond_max_positions": bool(limit and n > limit),
            }
            for n, loss in losses.items()
        ]
    return {
        "checkpoint": str(path),
        "data": str(tokens.path),
        "eval_tokens": eval_tokens,
        "longest_trained": trained,
        "results": rows,
    }
