"""The loss with bounded logits: the same value and gradients as the plain cross-entropy over the full
logits, without ever keeping a (tokens x vocab) tensor for the backward."""

import copy

import pytest
import torch

from growlength.loss import bound_logits, lm_loss
from growlength.models import build_model, model_config


@pytest.fixture(params=["tiny", "llama-tiny"])  # an untied head (GPT-NeoX) and a tied one (Llama)
def models(request):
    plain = build_model(model_config(request.param, vocab_size=512, eos_id=0), seed=0)
    bounded = copy.deepcopy(plain)
    assert bound_logits(bounded, chunk_tokens=100)
    return plain, bounded


def batch():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (2, 257), generator=generator)
    return ids[:, :-1], ids[:, 1:]


def test_chunked_loss_and_gradients_are_the_full_logits_ones(models):
    plain, bounded = models
    x, y = batch()
    losses = []
    for model in (plain, bounded):
        loss = lm_loss(model, x, y)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    named = dict(bounded.named_parameters())
    for name, param in plain.named_parameters():
        torch.testing.assert_close(named[name].grad, param.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert dict(plain.state_dict()).keys() == dict(bounded.state_dict()).keys()  # names unchanged


def test_no_tokens_by_vocab_tensor_is_kept_for_the_backward(models):
    """512 tokens x 512 vocab: the plain loss saves the logits for the backward; in pieces of 100 tokens
    no saved tensor with a vocabulary-sized last dimension is as large as a piece's logits."""
    plain, bounded = models
    x, y = batch()
    largest = {}
    for name, model in (("plain", plain), ("bounded", bounded)):
        sizes = []
        keep = sizes.append
        with torch.autograd.graph.saved_tensors_hooks(lambda t, keep=keep: keep(t.shape) or t, lambda t: t):
            lm_loss(model, x, y)
        largest[name] = max((shape.numel() for shape in sizes if shape and shape[-1] == 512), default=0)
    assert largest["plain"] >= 512 * 512
    assert largest["bounded"] < 100 * 512


def test_without_targets_the_head_gives_logits_and_a_capped_model_is_left_alone(models):
    _, bounded = models
    x, _ = batch()
    assert bounded(input_ids=x).logits.shape == (2, 256, 512)  # generation, export, Trainer: plain logits
    capped = build_model(model_config("tiny", vocab_size=512, eos_id=0), seed=0)
    capped.config.final_logit_softcapping = 30.0  # ops after the head: the loss must see them
    assert not bound_logits(capped, chunk_tokens=100)
    assert not bound_logits(capped, chunk_tokens=0)
    assert not hasattr(capped.get_output_embeddings(), "loss_chunk_tokens")
