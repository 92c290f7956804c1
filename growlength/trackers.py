"""Where a run's records go: `metrics.jsonl` always, and TensorBoard event files (`OUT/tensorboard/`)
and Weights & Biases when asked for (`log_to`). Only rank 0 writes.

The writers are imported when a run first opens them, so importing growlength never imports them.
On resume, records a crash left beyond the checkpoint are dropped from metrics.jsonl and from the
TensorBoard files (`purge_step`); W&B continues the same run (an id from the run folder), where
steps it already holds are not logged again.
"""

import hashlib
import importlib.util
import json
from pathlib import Path

from growlength.errors import GrowLengthError
from growlength.files import write_atomically, writing

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # name -> the package it needs


def tracker_names(log_to: str) -> list[str]:
    """The trackers `log_to` names ('tensorboard', 'wandb', 'tensorboard,wandb' or 'none'), each
    checked to exist and be installed."""
    names = [n.strip() for n in log_to.split(",") if n.strip() and n.strip() != "none"]
    for name in names:
        if name not in TRACKERS:
            raise GrowLengthError(f"log_to names {name!r}: choose tensorboard, wandb, both (comma) or none")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise GrowLengthError(
                f"log_to asks for {name}, which is not installed: pip install {name}, or drop it"
            )
    return names


def scalars(record: dict) -> dict[str, float]:
    """A metrics.jsonl record as named scalars: train/* for a step, val/* for an evaluation."""
    if "loss" in record:
        keys = ("loss", "seq_len", "lr", "tokens_per_s", "tokens")
        return {f"train/{k}": float(record[k]) for k in keys}
    values = {"val/loss": float(record["val_loss"]), "val/tokens": float(record["tokens"])}
    values.update({f"val/loss_at_{n}": float(v) for n, v in record["val_loss_by_len"].items()})
    return values


class Trackers:
    """metrics.jsonl plus the trackers named; every record goes to all of them."""

    def __init__(self, out: Path, names: list[str], *, step: int, config: dict):
        self.path = out / "metrics.jsonl"
        with writing("metrics.jsonl", out):
            _trim_jsonl(self.path, step)
        self.tensorboard = self.wandb = None
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1, flush_secs=10)
        if "wandb" in names:
            import wandb

            self.wandb = wandb.init(
                project=config.get("wandb_project") or "growlength",
                name=out.name,
                id=hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16],
                resume="allow",
                dir=str(out),
                config=config,
            )

    def write(self, record: dict) -> None:
        """The record to every destination. A write that fails stops the run (WriteFailed); a line cut
        short in metrics.jsonl is dropped when the run resumes."""
        with writing("metrics.jsonl", self.path.parent):
            append_line(self.path, json.dumps(record))
        values = scalars(record)
        if self.tensorboard is not None:
            with writing("TensorBoard events", self.path.parent / "tensorboard"):
                for name, value in values.items():
                    self.tensorboard.add_scalar(name, value, global_step=record["step"])
        if self.wandb is not None:
            self.wandb.log(values, step=record["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            with writing("TensorBoard events", self.path.parent / "tensorboard"):
                self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(train records, eval records) of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise GrowLengthError(f"no metrics.jsonl in {run_dir}: give folders that `growlength train` wrote")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if "loss" in r], [r for r in records if "val_loss" in r]


class NoTrackers:
    """What ranks other than 0 hold: records go nowhere."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def append_line(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line + "\n")


def _trim_jsonl(path: Path, step: int) -> None:
    """Drop records a crash left beyond the checkpoint we resume from (all of them from step 0)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines() if step > 0 else []:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut short by the crash
    write_atomically(path, "".join(line + "\n" for line in keep))  # a full disk damages nothing
