"""`growlength export`: a checkpoint as a standard Hugging Face model folder.

    OUT/config.json, model.safetensors, generation_config.json   (save_pretrained)
    OUT/tokenizer.json, tokenizer_config.json                    (a PreTrainedTokenizerFast)
    OUT/growlength.json                                          where it came from: run, step, lengths

`AutoModelForCausalLM.from_pretrained(OUT)` (an encoder trained with --objective mlm:
`AutoModelForMaskedLM`, its tokenizer with the mask token `<|mask|>`) and `AutoTokenizer.from_pretrained(OUT)`
load it with no growlength import. The folder is written beside OUT under a temporary name and renamed into place.
"""

import json
import os
import shutil
from pathlib import Path

from growlength.errors import GrowLengthError


def export(ckpt: str | Path, out: str | Path, *, data: str | None = None) -> Path:
    """Write the checkpoint (or a run folder's newest one) to `out` as a Hugging Face model folder;
    the tokenizer comes from the run's prepared data (or `data`)."""
    from growlength.checkpoint import model_from_checkpoint, open_checkpoint
    from growlength.files import file_sha256

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise GrowLengthError(f"{out} exists and is not empty: choose a new --out")
    opened = open_checkpoint(ckpt, data)
    tokenizer_file = opened.data.path / "tokenizer.json"
    trained_with = opened.state.get("tokenizer_sha256")
    if trained_with and file_sha256(tokenizer_file) != trained_with:
        raise GrowLengthError(
            f"{tokenizer_file} is not the tokenizer this model was trained with: give the run's data with --data"
        )
    model = model_from_checkpoint(opened.path, opened.model_cfg, "cpu")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(model, opened, tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write(model, opened, tmp: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    from growlength.mlm import MASK_TOKEN, PAD_TOKEN
    from growlength.models import is_encoder

    tokens, state = opened.data, opened.state
    eos_id, eos = int(tokens.meta["eos_id"]), tokens.meta["eos_token"]
    longest = opened.longest_trained
    model.config.eos_token_id = model.config.bos_token_id = eos_id
    encoder = is_encoder(model.config)
    if getattr(model, "generation_config", None) is not None and not encoder:
        model.generation_config.eos_token_id = model.generation_config.pad_token_id = eos_id
    model.save_pretrained(str(tmp))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokens.path / "tokenizer.json"),
        eos_token=eos,
        bos_token=eos,
        pad_token=eos,
        model_max_length=longest,
    )
    if encoder:  # the mask and padding tokens are the two ids after the tokenizer's, as in training
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN, "cls_token": eos, "sep_token": eos})
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        ids = (tokenizer.mask_token_id, tokenizer.pad_token_id)
        if ids != (model.config.mask_token_id, model.config.pad_token_id):
            raise GrowLengthError(f"the tokenizer's mask and pad ids {ids} are not the model's")
    tokenizer.save_pretrained(str(tmp))
    provenance = {
        "checkpoint": str(opened.path.resolve()),
        "step": state["progress"]["step"],
        "tokens": state["progress"]["tokens"],
        "trained_lengths": state["progress"]["seq_lens"],
        "schedule": state["config"]["schedule"],
        "data": str(tokens.path.resolve()),
    }
    (tmp / "growlength.json").write_text(json.dumps(provenance, indent=2) + "\n")
