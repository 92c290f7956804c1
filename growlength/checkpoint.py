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

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file, save_model

from growlength.dist import unwrap
from growlength.errors import GrowLengthError

STATE = "state.json"


def save_checkpoint(out: Path, *, step: int, model, optimizer, state: dict, keep: int) -> Path:
    """Write checkpoint `step` under out/checkpoints and keep the newest `keep`."""
    root = out / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(unwrap(model), str(tmp / "model.safetensors"))
    tensors, groups = _flatten_optimizer(optimizer.state_dict())
    tensors.update(_rng_tensors())
    save_file(tensors, str(tmp / "trainer.safetensors"))
    unwrap(model).config.to_json_file(str(tmp / "config.json"))
    files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
    full_state = {**state, "step": step, "param_groups": groups, "sha256": files}
    (tmp / STATE).write_text(json.dumps(full_state, indent=1))
    for path in tmp.iterdir():
        _fsync(path)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync(root)
    for old in list_checkpoints(out)[:-keep]:
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
            if _sha256(path / name) != digest:
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


def load_model_weights(path: Path, model) -> None:
    from safetensors.torch import load_model

    load_model(unwrap(model), str(path / "model.safetensors"), device=str(next(model.parameters()).device))


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore model, optimizer and RNG in place; return the saved state (step, tokens, loader, ...).
    Files are read as data only (safetensors and JSON): anything else in the folder is never opened."""
    state = read_state(path)
    try:
        load_model_weights(path, model)
        tensors = load_file(str(path / "trainer.safetensors"))
    except Exception as e:  # safetensors raises its own error types for a file that is not safetensors
        raise GrowLengthError(
            f"checkpoint {path} does not hold safetensors files ({e}): refusing to load it"
        ) from None
    device = next(model.parameters()).device
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state["param_groups"], device))
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available() and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return state


def _flatten_optimizer(sd: dict) -> tuple[dict, list]:
    tensors = {}
    for index, slots in sd["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: dict, groups: list, device) -> dict:
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            # AdamW keeps `step` on the CPU unless capturable; the moments live with the params.
            state.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
    return {"state": state, "param_groups": groups}


def _rng_tensors() -> dict:
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return tensors


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
