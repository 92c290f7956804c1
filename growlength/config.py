"""The training config: one keyword-only dataclass, loaded from YAML and/or command-line overrides.

Every field has its help text in `metadata`, which the CLI turns into `--flag-name`. Bad input fails
here, at load time, with one line naming the problem and the fix.
"""

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from growlength.errors import GrowLengthError


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


# Fields whose values must lie in a closed range (lr and beta2 also exclude an end: checked apart).
RANGES = (
    ("lr", 0.0, 1.0),
    ("min_lr_ratio", 0.0, 1.0),
    ("warmup", 0.0, 0.99),
    ("weight_decay", 0.0, 1.0),
    ("beta2", 0.0, 1.0),
    ("grad_clip", 0.0, float("inf")),
    ("evals", 1, 10000),
    ("eval_every_tokens", 1, float("inf")),
    ("seed", 0, 2**32 - 1),
)


@dataclass(kw_only=True)
class TrainConfig:
    data: str = _f(
        "shakespeare", "prepared folder, or 'shakespeare' for the embedded corpus (prepared on first use)"
    )
    vocab_size: int = _f(2048, "tokenizer size when the embedded corpus is prepared on first use")
    model: str = _f("small", "model preset (tiny, small, pythia-14m/70m/160m/410m, llama-*) or a config.json")
    schedule: str = _f(
        "doubling",
        "length schedule: doubling | linear | root | constant | stages | deepspeed | composer (the peers' own) "
        "| dd (Dataset Decomposition: power-of-two document chunks, one bucket per step)",
    )
    stages: str | None = _f(None, "explicit stages LENGTH:SHARE,... e.g. 128:0.25,256:0.25,1024:0.5")
    start_len: int = _f(128, "first training length (doubling, linear, root)")
    target_len: int = _f(1024, "final training length; must fit the model")
    ramp: float = _f(0.3, "ramps: fraction of the budget over which the length grows")
    multiple: int = _f(64, "ramps: lengths are multiples of this (composer: start + k x this)")
    degree: int = _f(2, "root: the root's degree (2 = square root)")
    rope_theta: float | None = _f(None, "RoPE base (default: the model's; Dataset Decomposition uses 100000)")
    batch_policy: str = _f(
        "tokens", "tokens (constant tokens per step) | reshape | rows | truncate | megatron: see budget.py"
    )
    tokens_per_step: int = _f(8192, "tokens per optimizer step over all ranks (at the target length for 'rows')")
    micro_batch_tokens: int = _f(8192, "most tokens in one forward pass per rank; more is accumulated")
    budget_steps: int | None = _f(None, "train for this many optimizer steps")
    budget_tokens: int | None = _f(None, "train for this many tokens (e.g. 2e8)")
    budget_seconds: float | None = _f(None, "train for this many seconds of training time (eval excluded)")
    lr: float = _f(2e-3, "peak learning rate (AdamW)")
    min_lr_ratio: float = _f(0.1, "final learning rate as a fraction of lr (cosine decay)")
    warmup: float = _f(0.05, "fraction of the budget spent warming the learning rate up")
    weight_decay: float = _f(0.1, "AdamW weight decay")
    beta2: float = _f(0.95, "AdamW beta2")
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0 turns it off)")
    evals: int = _f(8, "evaluate this many times, evenly over the budget (if eval_every_tokens is unset)")
    eval_every_tokens: int | None = _f(None, "evaluate every this many training tokens")
    eval_tokens: int = _f(16384, "held-out tokens scored per length at each evaluation")
    eval_seen_lengths: bool = _f(True, "also evaluate at every stage length trained so far (else: target only)")
    keep_checkpoints: int = _f(2, "how many recent checkpoints to keep")
    block_tokens: int = _f(16384, "shuffle granularity: the train stream is shuffled in blocks of this")
    seed: int = _f(0, "seed for weights and data order")
    device: str = _f("auto", "auto | cpu | cuda")
    log_to: str = _f("tensorboard", "besides metrics.jsonl: tensorboard | wandb | tensorboard,wandb | none")
    wandb_project: str = _f("growlength", "the Weights & Biases project when log_to has wandb")
    parallel: str = _f(
        "ddp", "under torchrun: ddp (a model copy per rank) | fsdp (FSDP2: weights and optimizer state sharded)"
    )

    def __post_init__(self):
        for name in ("start_len", "target_len", "tokens_per_step", "micro_batch_tokens", "eval_tokens"):
            if getattr(self, name) <= 0:
                raise GrowLengthError(f"{name} must be positive, got {getattr(self, name)}")
        if self.block_tokens < self.target_len:
            raise GrowLengthError(
                f"block_tokens {self.block_tokens} must be at least target_len {self.target_len}"
            )
        for name, low, high in RANGES:
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise GrowLengthError(f"{name} must be in [{low:g}, {high:g}], got {value}")
        if self.lr <= 0 or self.beta2 >= 1:
            raise GrowLengthError(f"lr must be positive and beta2 below 1, got lr {self.lr}, beta2 {self.beta2}")
        if self.keep_checkpoints < 1:
            raise GrowLengthError(f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise GrowLengthError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise GrowLengthError(f"parallel must be ddp or fsdp, got {self.parallel!r}")
        given = [b for b in ("budget_steps", "budget_tokens", "budget_seconds") if getattr(self, b) is not None]
        if len(given) > 1:
            raise GrowLengthError(f"give one budget, not {given}")
        if not given:
            self.budget_tokens = 160 * self.tokens_per_step

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def field_type(name: str) -> type:
    """The field's own type, with `| None` stripped: int, float or str."""
    hint = typing.get_type_hints(TrainConfig)[name]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def coerce(name: str, value):
    """value as the field's type; '2e8' and 2e8 are fine for an int field if they are whole."""
    if name not in FIELDS:
        close = difflib.get_close_matches(name, FIELDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise GrowLengthError(f"unknown config key {name!r}{hint}")
    if value is None:
        return None
    kind = field_type(name)
    try:
        if kind is int:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, bool) or not float(number).is_integer():
                raise ValueError
            return int(number)
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError
        return str(value)
    except (ValueError, TypeError):
        raise GrowLengthError(f"config key {name!r} must be {kind.__name__}, got {value!r}") from None


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping of config keys, as plain data (yaml.safe_load: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise GrowLengthError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise GrowLengthError(f"{path} is not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise GrowLengthError(f"{path} must hold a mapping of config keys, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """The YAML file's values, then the overrides on top, checked and typed."""
    values = read_yaml(path) if path else {}
    values.update({k: v for k, v in (overrides or {}).items()})
    return TrainConfig(**{k: coerce(k, v) for k, v in values.items()})


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
