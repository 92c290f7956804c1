"""Atomic checkpoints that hold everything a run needs to continue exactly.

    OUT/checkpoints/step_00000120/
        model.safetensors     weights
        trainer.safetensors   optimizer moments and RNG states, as plain tensors
        state.json            step, tokens, seconds, loader cursor, optimizer param groups, checksums
        config.json           the Hugging Face model config (so eval/export need no growlength config)

Nothing is pickled: tensors go through safetensors and the rest through JSON, so opening a checkpoint
never runs code. A checkpoint is written to a hidden temporary folder, fsynced and renamed into
place; state.json, written last, carries a sha256 of every other file, and a checkpoint whose files
do not match is skipped for the previous good one.
"""

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from growlength.errors import GrowLengthError
from growlength.files import file_sha256, fsync, writing

STATE = "state.json"


def save_checkpoint(
    out: Path, *, step: int, model_state: dict, optim_state: dict, model_config, state: dict, keep: int
) -> Path:
    """Write checkpoint `step` under out/checkpoints and keep the newest `keep`. The states are the full
    (unsharded) ones keyed by parameter name, as dist.full_state returns them."""
    root = out / "checkpoints"
    tmp = root / f".tmp-step_{step:08d}"
    try:
        with writing(f"checkpoint step {step}", root):
            return _write_checkpoint(root, tmp, step, model_state, optim_state, model_config, state, keep)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only a write cut short leaves it: never a partial checkpoint


def _write_checkpoint(root, tmp, step, model_state, optim_state, model_config, state, keep) -> Path:
    final = root / f"step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights, aliases = _drop_aliases(model_state)
    save_file(weights, str(tmp / "model.safetensors"))
    tensors, groups = _flatten_optimizer(optim_state)
    tensors.update(_rng_tensors())
    save_file(tensors, str(tmp / "trainer.safetensors"))
    model_config.to_json_file(str(tmp / "config.json"))
    files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
    full_state = {**state, "step": step, "param_groups": groups, "aliases": aliases, "sha256": files}
    (tmp / STATE).write_text(json.dumps(full_state, indent=1))
    for path in tmp.iterdir():
        fsync(path)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync(root)
    for old in list_checkpoints(root.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(out: Path) -> list[Path]:
    """Finished checkpoints under out, oldest first."""
    root = out / "checkpoints"
    return sorted(p for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []


def latest_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint that verifies; a damaged newer one is skipped with a warning."""
    for path in reversed(list_checkpoints(out)):
        problem = verify(path)
        if problem is None:
            return path
        warnings.warn(f"skipping checkpoint {path}: {problem}", stacklevel=2)
    return None


def verify(path: Path) -> str | None:
    """None if the checkpoint is whole, else what is wrong with it."""
    try:
        state = json.loads((path / STATE).read_text())
        for name, digest in state["sha256"].items():
            if file_sha256(path / name) != digest:
                return f"{name} does not match its checksum"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable ({e.__class__.__name__}: {e})"
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (then its newest good checkpoint)."""
    path = Path(path)
    if (path / STATE).is_file():
        problem = verify(path)
        if problem:
            raise GrowLengthError(f"checkpoint {path} is damaged: {problem}")
        return path
    found = latest_checkpoint(path) if path.is_dir() else None
    if found is None:
        raise GrowLengthError(f"no checkpoint in {path}: give a run folder or a checkpoint folder")
    return found


def read_state(path: Path) -> dict:
    return json.loads((path / STATE).read_text())


def read_weights(path: Path) -> dict:
    """The model's full state dict, tied names included, read as data."""
    aliases = read_state(path).get("aliases", {})
    weights = _read_safetensors(path / "model.safetensors")
    return {**weights, **{alias: weights[name] for alias, name in aliases.items()}}


def load_model_weights(path: Path, model) -> None:
    """Weights into a plain (unwrapped, unsharded) model."""
    model.load_state_dict(read_weights(path))


@dataclass(frozen=True)
class Opened:
    """A checkpoint as eval and export use it: its folder, saved state, model config and val/train data."""

    path: Path
    state: dict
    model_cfg: object
    data: object  # tokens.TokenData

    @property
    def longest_trained(self) -> int:
        """The longest length the run trained at (its target if it trained none yet)."""
        return max(self.state["progress"]["seq_lens"] or [self.state["config"]["target_len"]])


def open_checkpoint(ckpt: str | Path, data: str | None = None) -> Opened:
    """A checkpoint (or a run folder's newest one) with the run's prepared data (or `data`), checked
    to fit the model's vocabulary."""
    from transformers import AutoConfig

    from growlength.prepare import resolve_data
    from growlength.tokens import open_tokens

    path = resolve_checkpoint(ckpt)
    state = read_state(path)
    cfg = state["config"]
    tokens = open_tokens(data or resolve_data(cfg["data"], cfg["vocab_size"]))
    model_cfg = AutoConfig.from_pretrained(str(path))
    if tokens.vocab_size > model_cfg.vocab_size:
        raise GrowLengthError(
            f"data {tokens.path} has {tokens.vocab_size} tokens, more than the model's {model_cfg.vocab_size}"
        )
    return Opened(path, state, model_cfg, tokens)


def model_from_checkpoint(path: Path, model_cfg, device):
    """A Hugging Face model built from model_cfg (the checkpoint's config.json, possibly changed) with
    the checkpoint's weights, in eval mode."""
    from growlength.models import auto_class

    model = auto_class(model_cfg).from_config(model_cfg)
    load_model_weights(path, model)
    return model.to(device).eval()


def load_checkpoint(path: Path | None, model, optimizer) -> dict:
    """Restore model, optimizer and RNG in place (model may be DDP- or FSDP-wrapped); return the saved
    state (step, tokens, loader, ...). Files are read as data only (safetensors and JSON): anything
    else in the folder is never opened. Under torchrun rank 0 alone reads the files (`path` is None on
    the others): the state, tensors and RNG reach every rank by broadcast, so a resume holds one host
    copy of the checkpoint, not one per rank."""
    from growlength.dist import broadcast_json, broadcast_tensor, load_full_state

    state = broadcast_json(read_state(path) if path is not None else None)
    if any(isinstance(p, int) for group in state["param_groups"] for p in group["params"]):
        raise GrowLengthError(
            f"checkpoint {path} keys its optimizer state by index (growlength before 0.2): it cannot be "
            "resumed; eval and export still read it"
        )
    weights, optim_state, tensors = {}, {}, {}
    if path is not None:
        weights = read_weights(path)
        tensors = _read_safetensors(path / "trainer.safetensors")
        optim_state = _unflatten_optimizer(tensors, state["param_groups"])
    load_full_state(model, optimizer, weights, optim_state)
    torch.set_rng_state(broadcast_tensor(tensors.get("rng.cpu"), like=torch.get_rng_state()))
    if torch.cuda.is_available() and broadcast_json("rng.cuda" in tensors if path is not None else None):
        torch.cuda.set_rng_state(broadcast_tensor(tensors.get("rng.cuda"), like=torch.cuda.get_rng_state()))
    return state


def _read_safetensors(path: Path) -> dict:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a file that is not safetensors
        raise GrowLengthError(f"{path} is not a safetensors file ({e}): refusing to load it") from None


def _drop_aliases(weights: dict) -> tuple[dict, dict]:
    """Tied weights (e.g. embeddings and LM head) share one tensor: keep the first name, record the rest."""
    kept, aliases, first = {}, {}, {}
    for name, tensor in weights.items():
        key = (tensor.data_ptr(), tensor.shape)
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
            kept[name] = tensor.detach().cpu().contiguous()
    return kept, aliases


def _flatten_optimizer(sd: dict) -> tuple[dict, list]:
    """Optimizer slots as `optim.<param name>.<slot>` tensors, param groups (names, lr, ...) for JSON."""
    tensors = {}
    for param, slots in sd["state"].items():
        for slot, value in slots.items():
            tensors[f"optim.{param}.{slot}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: dict, groups: list) -> dict:
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            param, slot = key.removeprefix("optim.").rsplit(".", 1)
            state.setdefault(param, {})[slot] = value
    return {"state": state, "param_groups": groups}


def _rng_tensors() -> dict:
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return tensors
