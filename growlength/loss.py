"""The training loss: next-token cross-entropy, with the LM head's logits bounded in memory.

At a vocabulary of 50k and 65,536 tokens in a micro-batch, the fp32 logits alone are 13 GB (and their
bf16 copy and gradient more). `bound_logits` makes the model's output layer compute the loss instead of
the logits, over at most `chunk_tokens` tokens at a time, each piece checkpointed: the backward
recomputes one piece's logits at a time, so they never take more than chunk_tokens x vocab x 4 bytes,
for one more matmul through the head. The head stays inside the model's forward, so DDP's and FSDP's
hooks see it as always; parameter names do not change.

Shapes: B rows, T positions in a row, N = B x T tokens, H the model's width, V the vocabulary.
"""

import functools

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from growlength import dist

# configs whose models change the logits after the head: a loss computed in the head would skip that
_AFTER_HEAD = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def lm_loss(model, inputs_BT: torch.Tensor, targets_BT: torch.Tensor, position_ids_BT=None) -> torch.Tensor:
    """Mean next-token cross-entropy; the logits are upcast so bf16 runs lose no precision here.
    Position ids that restart inside a row (tokens.doc_position_ids) keep attention inside each document.
    With `bound_logits` and more targets than its chunk, the head returns the loss itself, in pieces."""
    head = dist.unwrap(model).get_output_embeddings()
    chunk = getattr(head, "loss_chunk_tokens", 0)
    if chunk and targets_BT.numel() > chunk:
        head.loss_targets = targets_BT
        try:
            return model(input_ids=inputs_BT, position_ids=position_ids_BT, use_cache=False).logits
        finally:
            head.loss_targets = None
    logits_BTV = model(input_ids=inputs_BT, position_ids=position_ids_BT, use_cache=False).logits
    return F.cross_entropy(logits_BTV.float().flatten(0, 1), targets_BT.flatten())


def bound_logits(model, chunk_tokens: int) -> bool:
    """Make the model's output layer return the loss in pieces of chunk_tokens when lm_loss gives it
    targets (and plain logits otherwise). Returns False, changing nothing, where chunk_tokens is 0 or
    the model changes its logits after the head (soft-capping, a logit scale)."""
    if not chunk_tokens or any(getattr(model.config, key, None) for key in _AFTER_HEAD):
        return False
    head = model.get_output_embeddings()
    head.loss_chunk_tokens, head.loss_targets = chunk_tokens, None
    head.forward = functools.partial(_head_forward, head, type(head).forward)
    return True


def _head_forward(head, plain_forward, hidden_BTH: torch.Tensor) -> torch.Tensor:
    if head.loss_targets is None:
        return plain_forward(head, hidden_BTH)
    return chunked_cross_entropy(hidden_BTH, head.weight, head.bias, head.loss_targets, head.loss_chunk_tokens)


def chunked_cross_entropy(hidden_BTH, weight_VH, bias_V, targets_BT, chunk_tokens: int) -> torch.Tensor:
    """mean over tokens of cross_entropy(hidden @ weight.T + bias, targets), chunk_tokens rows at a time,
    each chunk recomputed in the backward instead of keeping its logits."""
    hidden_NH, targets_N = hidden_BTH.flatten(0, 1), targets_BT.flatten()
    total = hidden_NH.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets_N), chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        total = total + checkpoint(
            _loss_sum, hidden_NH[rows], weight_VH, bias_V, targets_N[rows], use_reentrant=False
        )
    return total / len(targets_N)


def _loss_sum(hidden_NH, weight_VH, bias_V, targets_N) -> torch.Tensor:
    logits_NV = F.linear(hidden_NH, weight_VH, bias_V)
    return F.cross_entropy(logits_NV.float(), targets_N, reduction="sum")
