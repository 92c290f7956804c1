"""FLOPs per token and model FLOPs utilization (MFU): the share of the device's peak a run uses.

MFU = tokens/s x training FLOPs per token / the device's peak FLOP/s. The peaks below are dense bf16
tensor-core figures from the vendors' data sheets (no sparsity); `--peak-tflops` overrides them, and a
device not in the table (a CPU among them) gets no MFU unless it is given.
"""

PEAK_TFLOPS = (  # (name fragment, dense bf16 TFLOP/s), most specific first
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("V100", 125.0),
    ("MI300X", 1307.0),
)


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6 x the parameters that multiply (all but the input embedding lookup;
    the LM head counts even when tied) plus causal attention, 6 x layers x width x seq_len: the PaLM
    paper's appendix B term (12 x layers x width x seq_len) halved, since under the causal mask a token
    attends on average to half the window and the kernels (FlashAttention, SDPA's causal path) skip the
    masked half. The full-attention count overstates a step at 8,192 by up to 1.45x."""
    config = model.config
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    matmul = sum(p.numel() for p in model.parameters()) - embedding.numel()
    if head is embedding:
        matmul += head.numel()
    return 6.0 * matmul + 6.0 * config.num_hidden_layers * config.hidden_size * seq_len


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """The device's peak FLOP/s: the override, else the table's entry for the name, else None."""
    if override_tflops:
        return override_tflops * 1e12
    for fragment, tflops in PEAK_TFLOPS:
        if fragment in device_name:
            return tflops * 1e12
    return None


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
