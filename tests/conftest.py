import os
import tempfile
from pathlib import Path

import pytest

# Tests never write to the user's cache: the embedded corpus is prepared into a temporary folder.
os.environ.setdefault("GROWLENGTH_CACHE", tempfile.mkdtemp(prefix="growlength-cache-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Weights & Biases runs stay on disk: no account, no network.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """The embedded Shakespeare corpus with a 512-token BPE: real text, prepared once per session."""
    from growlength.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "shakespeare-512"
    prepare(["shakespeare"], out, vocab_size=512)
    return out


def tiny_config(data: Path, **overrides):
    """A config that trains the `tiny` model through 64 -> 128 -> 256 in seconds."""
    from growlength.config import TrainConfig

    values = dict(
        data=str(data),
        model="tiny",
        schedule="doubling",
        start_len=64,
        target_len=256,
        tokens_per_step=2048,
        budget_steps=24,
        evals=3,
        eval_tokens=4096,
        lr=3e-3,
        block_tokens=1024,
        keep_checkpoints=5,
    )
    values.update(overrides)
    return TrainConfig(**values)


# Child processes of the CLI tests: no warnings noise on stderr, where the tests read the one error line.
CHILD_ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def train_args(config_path, out, *extra) -> list[str]:
    """`-m growlength train` arguments for a saved config, as a user would type them."""
    return ["-m", "growlength", "train", "--config", str(config_path), "--out", str(out), "--quiet", *extra]


def cut_back(run: Path, to: Path, step: int) -> Path:
    """A copy of a finished run as a crash after `step` would have left it: its checkpoints up to that
    step, its metrics up to that step (the copy resumes from there)."""
    import json
    import shutil

    from growlength.checkpoint import list_checkpoints

    shutil.copytree(run, to)
    for path in list_checkpoints(to):
        if int(path.name.split("_")[1]) > step:
            shutil.rmtree(path)
    lines = (to / "metrics.jsonl").read_text().splitlines()
    (to / "metrics.jsonl").write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= step))
    return to
