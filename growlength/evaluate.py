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
import torch.nn.functional as F

from growlength.errors import GrowLengthError
from growlength.tokens import eval_windows


def autocast_context(device):
    """bf16 autocast on CUDA; on the CPU nothing (fp32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def lm_loss(model, inputs_BT: torch.Tensor, targets_BT: torch.Tensor, position_ids_BT=None) -> torch.Tensor:
    """Mean next-token cross-entropy; the logits are upcast so bf16 runs lose no precision here.
    Position ids that restart inside a row (tokens.doc_positions) keep attention inside each document."""
    logits_BTV = model(input_ids=inputs_BT, position_ids=position_ids_BT, use_cache=False).logits
    return F.cross_entropy(logits_BTV.float().flatten(0, 1), targets_BT.flatten())


@torch.no_grad()
def val_loss(model, val, seq_len: int, *, eval_tokens: int, micro_batch_tokens: int, device, autocast) -> float:
    inputs, targets = eval_windows(val, seq_len, eval_tokens)
    rows_per_pass = max(1, micro_batch_tokens // seq_len)
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(inputs), rows_per_pass):
        x = torch.from_numpy(inputs[i : i + rows_per_pass]).to(device)
        y = torch.from_numpy(targets[i : i + rows_per_pass]).to(device)
        with autocast():
            total += lm_loss(model, x, y).item() * y.numel()
    model.train(was_training)
    return total / targets.size


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
    from growlength.plan import device_for

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
