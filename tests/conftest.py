import os
import tempfile
from pathlib import Path

import pytest

from growlength.models import flush_denormals

# Tests never write to the user's caches, whatever the environment says: the embedded corpus is
# prepared into a temporary folder, and Hugging Face, matplotlib and inductor keep theirs there too.
_CACHE = Path(tempfile.mkdtemp(prefix="growlength-tests-"))
os.environ["GROWLENGTH_CACHE"] = str(_CACHE / "growlength")
os.environ["HF_HOME"] = str(_CACHE / "hf")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["MPLCONFIGDIR"] = str(_CACHE / "matplotlib")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(_CACHE / "inductor")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# In-process runs are compared bit for bit with runs in child processes, which flush subnormal floats
# at setup; worker threads copy that setting when created, so set it before any test makes them.
flush_denormals()
# Weights & Biases runs stay on disk: no account, no network.
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["WANDB_CONFIG_DIR"] = os.environ["WANDB_CACHE_DIR"] = str(_CACHE / "wandb")


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
# Runs compared with torchrun's ranks (one thread each) get one thread too: another thread count sums in
# another order, and how far that drifts over a few steps depends on the machine.
ONE_THREAD_ENV = {**CHILD_ENV, "OMP_NUM_THREADS": "1"}


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
