"""Model presets -> a Hugging Face config and a freshly initialised causal LM (no download).

The Pythia presets have the shapes of the models the GrowLength paper trained (GPT-NeoX, rotary on a
quarter of each head, theta 10000, 2048 positions); `tiny` and `small` are the same family shrunk for
tests and CPU runs. Any other causal LM comes in as `--model path/to/config.json`.
"""

import json
from pathlib import Path

from growlength.errors import GrowLengthError

_NEOX_ROPE = {"rope_theta": 10000.0, "partial_rotary_factor": 0.25, "rope_type": "default"}
_LLAMA_ROPE = {"rope_theta": 10000.0, "rope_type": "default"}


def _neox(hidden: int, layers: int, heads: int) -> dict:
    return {
        "model_type": "gpt_neox",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
        "max_position_embeddings": 2048,
        "rope_parameters": dict(_NEOX_ROPE),
        "use_parallel_residual": True,
        "tie_word_embeddings": False,
    }


def _llama(hidden: int, layers: int, heads: int, intermediate: int) -> dict:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "intermediate_size": intermediate,
        "max_position_embeddings": 4096,
        "rope_parameters": dict(_LLAMA_ROPE),
        "tie_word_embeddings": True,
    }


def _modernbert(hidden: int, layers: int, heads: int) -> dict:
    """A ModernBERT encoder (rotary positions, global attention every third layer, local windows of 128
    between), for --objective mlm."""
    return {
        "model_type": "modernbert",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": 8192,
    }


PRESETS: dict[str, dict] = {
    "tiny": _neox(64, 2, 2),
    "small": _neox(256, 4, 4),
    "small-16k": {**_neox(256, 4, 4), "max_position_embeddings": 16384},  # for long-target CPU benches
    "pythia-14m": _neox(128, 6, 4),
    "pythia-70m": _neox(512, 6, 8),
    "pythia-160m": _neox(768, 12, 12),
    "pythia-160m-8k": {**_neox(768, 12, 12), "max_position_embeddings": 8192},  # the GPU profile to 8,192
    "pythia-410m": _neox(1024, 24, 16),
    "llama-tiny": _llama(64, 2, 2, 172),
    "llama-small": _llama(256, 4, 4, 688),
    "llama-150m": _llama(768, 12, 12, 2048),
    "modernbert-tiny": _modernbert(64, 2, 2),
    "modernbert-small": _modernbert(256, 4, 4),
}


ENCODER_TYPES = ("modernbert",)  # model types trained with --objective mlm (mlm.py)


def is_encoder(config) -> bool:
    return getattr(config, "model_type", None) in ENCODER_TYPES


def auto_class(config):
    """The transformers auto class a config builds: masked LM for an encoder, causal LM otherwise."""
    import transformers

    return transformers.AutoModelForMaskedLM if is_encoder(config) else transformers.AutoModelForCausalLM


def model_config(model: str, *, vocab_size: int, eos_id: int):
    """The HF config for a preset name or a config.json path, sized for a tokenizer of vocab_size."""
    from transformers import AutoConfig

    if model in PRESETS:
        fields = dict(PRESETS[model])
        # Pad the embedding to a multiple of 64 (as Pythia does): faster matmuls, same model. An encoder
        # keeps the two ids after the tokenizer's for its mask and padding tokens.
        fields["vocab_size"] = -(-(vocab_size + 2 * (fields["model_type"] in ENCODER_TYPES)) // 64) * 64
    else:
        fields = _read_config_json(model)
    fields.update(bos_token_id=eos_id, eos_token_id=eos_id)
    if fields["model_type"] in ENCODER_TYPES:  # the data's end of text, then a mask and a padding id of its own
        # (ModernBERT's padding row never trains: it cannot be the end of text every row holds)
        fields.update(
            cls_token_id=eos_id, sep_token_id=eos_id, mask_token_id=vocab_size, pad_token_id=vocab_size + 1
        )
    model_type = fields.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **fields)
    except (ValueError, TypeError, KeyError) as e:
        raise GrowLengthError(f"model config {model!r} is not valid: {str(e).splitlines()[-1]}") from None
    if config.vocab_size < vocab_size + 2 * is_encoder(config):
        raise GrowLengthError(
            f"the tokenizer has {vocab_size} tokens but model {model!r} has vocab_size {config.vocab_size}: "
            "raise vocab_size in the model config or prepare with a smaller --vocab-size"
        )
    return config


def _read_config_json(model: str) -> dict:
    path = Path(model)
    if not path.is_file():
        raise GrowLengthError(
            f"unknown model {model!r}: give a preset ({', '.join(PRESETS)}) or a config.json path"
        )
    try:
        fields = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GrowLengthError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(fields, dict) or "model_type" not in fields:
        raise GrowLengthError(f"{path} has no model_type: write a Hugging Face config.json (e.g. 'llama')")
    return fields


def init_config(folder: str, *, vocab_size: int, target_len: int):
    """The config of a local `save_pretrained` folder to continue training from (no download: a folder
    or nothing). Its max_position_embeddings is raised to target_len where that is beyond it: a rotary
    model has no learned positions, and the position policy (rope.py) says how RoPE meets them."""
    from transformers import AutoConfig

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise GrowLengthError(f"--init-from {folder}: no config.json there; give a save_pretrained folder")
    if not any(path.glob("*.safetensors")):
        raise GrowLengthError(f"--init-from {folder}: no .safetensors weights there (other formats are refused)")
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if config.vocab_size < vocab_size + 2 * is_encoder(config):
        raise GrowLengthError(
            f"--init-from {folder} has vocab_size {config.vocab_size}, the data's tokenizer {vocab_size}: "
            "prepare the data with the model's tokenizer"
        )
    limit = max_positions(config)
    if limit is not None and target_len > limit:
        config.max_position_embeddings = target_len
    return config


def trained_context(folder: str) -> int | None:
    """The longest length the init model was trained at: a growlength export says so in growlength.json;
    otherwise its max_position_embeddings (None where the config sets no limit)."""
    from transformers import AutoConfig

    provenance = Path(folder) / "growlength.json"
    if provenance.is_file():
        return max(json.loads(provenance.read_text())["trained_lengths"])
    return max_positions(AutoConfig.from_pretrained(folder, local_files_only=True))


def same_tokenizer(a: Path, b: Path) -> bool:
    """Whether two tokenizer.json files tokenize alike: the same model (vocabulary, merges), pre-tokenizer,
    normalizer and added tokens; a save_pretrained copy rewrites the rest of the file."""
    keys = ("model", "pre_tokenizer", "normalizer")
    one, two = json.loads(a.read_text()), json.loads(b.read_text())
    added = [{(t["id"], t["content"]) for t in x.get("added_tokens") or ()} for x in (one, two)]
    return all(one.get(k) == two.get(k) for k in keys) and added[0] == added[1]


def max_positions(config) -> int | None:
    """The longest sequence the config says it was built for, or None if it sets no limit."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return None


def uses_rope(config) -> bool:
    return getattr(config, "rope_parameters", None) is not None


def check_fits(config, target_len: int) -> None:
    """Training at target_len must stay inside what the model supports; raise before any work."""
    limit = max_positions(config)
    if limit is not None and target_len > limit:
        raise GrowLengthError(
            f"target_len {target_len} exceeds the model's {limit} positions: lower the target or raise "
            "max_position_embeddings in the model config"
        )
    if not uses_rope(config):
        raise GrowLengthError(
            f"model type {config.model_type!r} has no rotary position embedding: GrowLength extrapolates "
            "positions across stages and needs RoPE (GPT-NeoX, Llama, Mistral, Qwen2, ...)"
        )


def flush_denormals() -> None:
    """Treat subnormal floats as zero in CPU arithmetic.

    Late in a long CPU run, activations and gradients underflow into subnormal floats, and x86 math on
    them is many times slower: after 2,633 steps a measured backward pass took 3.1 s instead of 0.9 s,
    and 1.4 s once flushed. Worker threads copy the setting when they are created, so call this before
    the first parallel torch op of the process (setup does)."""
    import torch

    torch.set_flush_denormal(True)


def build_model(
    config, seed: int, attn_implementation: str = "sdpa", checkpointing: bool = False, init_from: str | None = None
):
    """A freshly initialised causal LM, the same weights for the same seed (or the weights of the
    `init_from` folder, in fp32, under `config`), with the attention kernel asked for and (optionally)
    activation checkpointing, both through transformers; in train mode. (`from_pretrained` returns a
    model in eval mode, where transformers skips activation checkpointing and dropout.)"""
    import torch

    torch.manual_seed(seed)
    if init_from:
        model = auto_class(config).from_pretrained(
            init_from,
            config=config,
            attn_implementation=attn_implementation,
            dtype=torch.float32,
            use_safetensors=True,
            local_files_only=True,
        )
    else:
        model = auto_class(config).from_config(config, attn_implementation=attn_implementation)
    if checkpointing:
        _checkpoint_activations(model)
    return model.train()


def _checkpoint_activations(model) -> None:
    """transformers' activation checkpointing, non-reentrant; named `activation_checkpointing_enable` from
    5.2x, `gradient_checkpointing_enable` before (the GPU machine's image has 5.17)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def set_rope(model, rope_parameters: dict) -> bool:
    """Give the model these RoPE parameters: its config's, and every rotary embedding rebuilt from it
    (their frequencies are buffers computed at construction, not weights). Returns whether they changed."""
    config = model.config
    if config.rope_parameters == rope_parameters:
        return False
    config.rope_parameters = dict(rope_parameters)
    for name, module in list(model.named_modules()):
        if type(module).__name__.endswith("RotaryEmbedding"):
            rebuilt = type(module)(config=config).to(module.inv_freq.device)
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], rebuilt)
    return True


def compile_model(model, lengths: int):
    """torch.compile each transformer block in place (torchtitan's per-block compile), with static shapes:
    one graph per micro-batch shape, shared by every block. The rest stays eager, mask creation above all:
    traced, transformers' `create_causal_mask` always builds a boolean mask (its check for packed
    sequences cannot return early under tracing), and SDPA given a mask cannot take its causal flash
    kernel; eager, it returns None and every block's SDPA runs `is_causal`. A step shape gives at most
    two micro-batch shapes (full ones and a shorter last one), so dynamo's recompile limit is raised to
    2 x the schedule's lengths: a schedule of many lengths (a linear ramp in steps of 8) then recompiles
    at each, and the run reports what that costs, instead of silently falling back to eager code past
    the default limit of 8. Evaluation runs eager (`eager`)."""
    import torch._dynamo
    import torch._dynamo.config as dynamo

    # blocks of one class share compiled code, guarded on type and shapes: a second model of the same
    # class in this process (the next recipe of a bench) would reuse the first one's graphs and report
    # no compiling; each run starts from an empty cache and counts its own
    torch._dynamo.reset()
    dynamo.recompile_limit = max(dynamo.recompile_limit, 2 * lengths)
    dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 2 * lengths)
    blocks = transformer_blocks(model)
    if not blocks:
        raise GrowLengthError(f"--compile: {type(model).__name__} names no transformer block class to compile")
    for block in blocks:
        block.compile(dynamic=False)
    return model


def transformer_blocks(model) -> list:
    """The model's transformer blocks: the modules of the classes it lists in `_no_split_modules`, but
    any that holds a parameter shared with another module (ModernBERT lists its embeddings, whose
    weight the tied decoder shares): FSDP2 needs a shared parameter inside one unit, the root here."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    owners: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    return [
        module
        for module in model.modules()
        if type(module).__name__ in names and all(owners[id(q)] == 1 for q in module.parameters())
    ]


def eager():
    """A context in which compiled blocks run their eager code (evaluation: other shapes, no backward)."""
    import torch

    return torch.compiler.set_stance("force_eager")


def compile_stats() -> tuple[int, float]:
    """(graphs compiled, seconds spent compiling) so far in this process, from dynamo's own counters:
    the forward graph is compiled at the first call of a shape, its backward at the first backward."""
    from torch._dynamo import utils

    times = utils.compilation_time_metrics
    seconds = sum(times.get("_compile.compile_inner", ())) + sum(times.get("backward._backward_impl", ()))
    return utils.counters["stats"]["unique_graphs"], seconds


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def params_of(model_cfg) -> int:
    """The parameters of the model a config builds, counted without building it (on the meta device)."""
    import torch

    with torch.device("meta"):
        return count_params(auto_class(model_cfg).from_config(model_cfg))
