"""Configs: keyword-only dataclasses (`TrainConfig`, and the keys of `bench` and `profile` in
`BenchConfig` and `ProfileConfig`), loaded from YAML and/or command-line overrides through one path.

Every field has its help text in `metadata` (`option`), which the CLI turns into `--flag-name` with its
default shown. One coercion (`coerce`) types every value of every config; bad input fails here, at
load time, with one line naming the problem and the fix.
"""

import dataclasses
import difflib
import itertools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from growlength.adaptive import check_bounds
from growlength.budget import check_batch_policy
from growlength.errors import GrowLengthError
from growlength.files import write_atomically
from growlength.recipes import BASELINE, DEFAULT_RUNS, RECIPES, recipe
from growlength.rope import parse_rope_scaling, parse_rope_theta
from growlength.schedule import SCHEDULES, doubling_lengths, make_schedule
from growlength.trackers import tracker_names


def option(default, help: str):
    """A config field with its help text (shown by `--help`, with the default)."""
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
    ("checkpoint_every", 1, float("inf")),
    ("ramp", 0.0, 1.0),
    ("auto_power", 0.0, float("inf")),
    ("degree", 1, float("inf")),
    ("multiple", 1, float("inf")),
    ("loss_chunk_tokens", 0, float("inf")),
    ("seed", 0, 2**32 - 1),
)


ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2")


def default_start_len(target_len: int) -> int:
    """Where the default schedule starts: target_len / 64 rounded down to a power of two, between 8 and 32.

    >>> [default_start_len(t) for t in (256, 1000, 1024, 2048, 8192, 131072)]
    [8, 8, 16, 32, 32, 32]

    The arena's choice (docs/arena.md, "Tuning GrowLength"): starting shorter ended lower at both CPU
    targets down to 32 (2,048: from 32 or 16 below from 128; 8,192: from 32 or 64 below 128 and 256)."""
    return min(32, max(8, 1 << max(0, (target_len // 64).bit_length() - 1)))


@dataclass(kw_only=True)
class TrainConfig:
    data: str = option(
        "shakespeare",
        "prepared folder (several as 'a,b': one stream), or 'shakespeare' for the embedded corpus (prepared on "
        "first use)",
    )
    vocab_size: int = option(2048, "tokenizer size when the embedded corpus is prepared on first use")
    model: str = option("small", "model preset (tiny, small, pythia-14m/70m/160m/410m, llama-*) or a config.json")
    schedule: str = option(
        "doubling",
        "length schedule: doubling | auto (doubling, shares planned from measured speed) | linear | root "
        "| constant | stages | deepspeed | composer (the peers' own) | dd (Dataset Decomposition: power-of-two "
        "document chunks, one bucket per step) | adaptive (doubling, each change when the length stops paying)",
    )
    objective: str = option(
        "clm", "clm (next-token prediction, a causal LM) or mlm (masked tokens, an encoder: modernbert-*)"
    )
    mask_rate: float = option(0.3, "mlm: the share of tokens masked (0.3 ModernBERT's, 0.15 BERT's)")
    adaptive_floor: float = option(
        0.5, "adaptive: the least share of the budget a length takes, as a multiple of the equal share 1/n"
    )
    adaptive_ceiling: float = option(
        2.0, "adaptive: the most share of the budget a length before the target takes, as a multiple of 1/n"
    )
    auto_power: float = option(
        1.0, "auto: each length's share of the time goes as (its tokens/s over the target's) ** this; 0 = equal"
    )
    plan_from: str | None = option(
        None, "auto: plan from this saved `growlength profile --out` JSON instead of measuring at the start"
    )
    stages: str | None = option(
        None,
        "explicit stages LENGTH:SHARE[:TOKENS_PER_STEP[:LR_MULTIPLIER]],... e.g. 128:0.25,256:0.25,1024:0.5 "
        "(or 1/3 shares); a stage's own tokens per step grows the batch with the length",
    )
    start_len: int | None = option(
        None, "first training length (doubling, auto, linear, root); default target_len / 64 (a power of 2, 8..32)"
    )
    target_len: int = option(1024, "final training length; must fit the model")
    ramp: float = option(0.3, "ramps: fraction of the budget over which the length grows")
    multiple: int = option(64, "ramps: lengths are multiples of this (composer: start + k x this)")
    degree: int = option(2, "root: the root's degree (2 = square root)")
    rope_theta: str | None = option(
        None,
        "RoPE base: THETA for every stage, or LENGTH:THETA,... from each length on (e.g. 8192:500000); default "
        "the model's (Dataset Decomposition uses 100000)",
    )
    rope_scaling: str = option(
        "none", "none (extrapolate) | yarn:ORIGINAL (YaRN at each length beyond it) | yarn (the init model's)"
    )
    init_from: str | None = option(
        None, "a local Hugging Face model folder (save_pretrained, safetensors) to train on from; replaces --model"
    )
    batch_policy: str = option(
        "tokens", "tokens (constant tokens per step) | reshape | rows | truncate | megatron: see budget.py"
    )
    tokens_per_step: int = option(
        8192, "tokens per optimizer step over all ranks (at the target length for 'rows')"
    )
    micro_batch_tokens: int = option(8192, "most tokens in one forward pass per rank; more is accumulated")
    budget_steps: int | None = option(None, "train for this many optimizer steps")
    budget_tokens: int | None = option(None, "train for this many tokens (e.g. 2e8)")
    budget_seconds: float | None = option(None, "train for this many seconds of training time (eval excluded)")
    lr: float = option(2e-3, "peak learning rate (AdamW)")
    min_lr_ratio: float = option(0.1, "final learning rate as a fraction of lr (cosine decay)")
    warmup: float = option(0.05, "fraction of the budget spent warming the learning rate up")
    weight_decay: float = option(0.1, "AdamW weight decay")
    beta2: float = option(0.95, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0 turns it off)")
    evals: int = option(8, "evaluate this many times, evenly over the budget (if eval_every_tokens is unset)")
    eval_every_tokens: int | None = option(None, "evaluate every this many training tokens")
    eval_tokens: int = option(16384, "held-out tokens scored per length at each evaluation")
    eval_seen_lengths: bool = option(
        True, "also evaluate at every stage length trained so far (else: target only)"
    )
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep")
    checkpoint_every: int | None = option(
        None, "write a checkpoint every this many optimizer steps, and at the end (default: at each evaluation)"
    )
    block_tokens: int = option(16384, "shuffle granularity: the train stream is shuffled in blocks of this")
    lanes: int = option(
        1024,
        "a step's rows are dealt from up to this many far-apart regions of the stream, each at least a block "
        "(1: a step reads one contiguous window)",
    )
    seed: int = option(0, "seed for weights and data order")
    device: str = option("auto", "auto | cpu | cuda")
    log_to: str = option("tensorboard", "besides metrics.jsonl: tensorboard | wandb | tensorboard,wandb | none")
    wandb_project: str = option("growlength", "the Weights & Biases project when log_to has wandb")
    log_every_seconds: float = option(30.0, "off a terminal (a batch job's log), a progress line this often")
    parallel: str = option(
        "ddp", "under torchrun: ddp (a model copy per rank) | fsdp (FSDP2: weights and optimizer state sharded)"
    )
    attn_implementation: str = option(
        "sdpa", "attention kernel, passed to transformers: sdpa | eager | flex_attention | flash_attention_2"
    )
    activation_checkpointing: bool = option(False, "recompute each block's activations in the backward pass")
    doc_mask: bool = option(
        False, "position ids restart at each document of a packed row, and attention stays inside it"
    )
    loss_chunk_tokens: int = option(
        8192,
        "the LM head and its fp32 cross-entropy run over at most this many tokens at a time, each piece "
        "recomputed in the backward: the logits never take more than this x vocab x 4 bytes (0: all at once)",
    )
    compile: bool = option(
        False, "torch.compile the training step's model: one static graph per step shape (so per stage length)"
    )
    peak_tflops: float | None = option(
        None, "the device's peak TFLOP/s for MFU (default: a table of GPUs by name; none on a CPU)"
    )

    def __post_init__(self):
        if self.start_len is None:
            self.start_len = default_start_len(self.target_len)
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
        if self.attn_implementation not in ATTENTION:
            raise GrowLengthError(
                f"attn_implementation must be one of {', '.join(ATTENTION)}, got {self.attn_implementation!r}"
            )
        if self.schedule not in SCHEDULES:
            raise GrowLengthError(f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.schedule == "stages":  # lengths that grow, shares that sum to 1
            make_schedule("stages", start_len=self.start_len, target_len=self.target_len, stages=self.stages)
        check_batch_policy(self.batch_policy)
        check_bounds(self.adaptive_floor, self.adaptive_ceiling)
        if self.objective not in ("clm", "mlm"):
            raise GrowLengthError(f"objective must be clm or mlm, got {self.objective!r}")
        if not 0 < self.mask_rate < 1:
            raise GrowLengthError(f"mask_rate must be in (0, 1), got {self.mask_rate}")
        if self.objective == "mlm":
            given = [k for k in ("doc_mask", "compile", "rope_theta", "init_from") if getattr(self, k)]
            given += ["rope_scaling"] if self.rope_scaling != "none" else []
            if given:
                raise GrowLengthError(f"objective mlm does not support {', '.join(given)} yet: drop it")
        tracker_names(self.log_to)
        parse_rope_theta(self.rope_theta)
        if parse_rope_scaling(self.rope_scaling) == ("yarn", None) and not self.init_from:
            raise GrowLengthError("rope_scaling yarn needs --init-from (or the original length: yarn:2048)")
        given = [b for b in ("budget_steps", "budget_tokens", "budget_seconds") if getattr(self, b) is not None]
        if len(given) > 1:
            raise GrowLengthError(f"give one budget, not {given}")
        if not given:
            self.budget_tokens = 160 * self.tokens_per_step

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
class BenchConfig:
    """The bench's own keys (a bench YAML holds these beside TrainConfig's)."""

    runs: str = option(
        DEFAULT_RUNS,
        f"comma-separated recipes (all: {', '.join(RECIPES)}); a variant adds keys: growlength+start_len=32",
    )
    sweep: str | None = option(
        None,
        "grid of train keys run for every recipe first, e.g. 'lr=1e-3,2e-3 tokens_per_step=2048,8192'; "
        "each recipe's best point is then rerun with fresh seeds",
    )
    repeats: int = option(2, "seeds per recipe (its best point), run interleaved")
    equal_tokens: bool = option(False, "also rerun each best point for the baseline's tokens (equal tokens)")
    short_len: int = option(128, "length of the fixed-short run")
    extrapolate: str | None = option(None, "lengths of the final eval (default: short_len ... 2 x target)")

    def __post_init__(self):
        if self.repeats < 1:
            raise GrowLengthError(f"repeats must be at least 1, got {self.repeats}")
        self.run_names()
        parse_sweep(self.sweep)

    def run_names(self) -> list[str]:
        names = [n.strip() for n in self.runs.split(",") if n.strip()]
        if BASELINE not in names:
            raise GrowLengthError(f"the bench needs the baseline run {BASELINE!r} among --runs")
        if len(set(names)) != len(names):
            raise GrowLengthError(f"--runs names a run twice: {self.runs}")
        for name in names:
            recipe_values(name, short_len=self.short_len, start_len=self.short_len)  # bad names fail here
        return names

    def final_lengths(self, target_len: int) -> list[int]:
        if self.extrapolate:
            return parse_lengths(self.extrapolate, "extrapolate")
        return sorted({*doubling_lengths(self.short_len, 2 * target_len), target_len})

    def seeds(self, base_seed: int) -> list[int]:
        """Fresh seeds after a sweep (its seed chose the best point), else base_seed onwards."""
        first = base_seed + 1 if self.sweep else base_seed
        return list(range(first, first + self.repeats))


@dataclass(kw_only=True)
class ProfileConfig:
    """The profile's own keys (beside TrainConfig's, which give the model, data and step shape)."""

    lengths: str | None = option(None, "comma-separated lengths ending at target_len (default: doubling to it)")
    rounds: int = option(5, "timed steps per length")

    def __post_init__(self):
        if self.rounds < 1:
            raise GrowLengthError(f"rounds must be at least 1, got {self.rounds}")

    def length_list(self, cfg: TrainConfig) -> list[int]:
        if not self.lengths:
            return list(doubling_lengths(cfg.start_len, cfg.target_len))
        lengths = parse_lengths(self.lengths, "--lengths")
        if max(lengths) != cfg.target_len:
            raise GrowLengthError(f"--lengths must end at the target length {cfg.target_len}, got {lengths}")
        return lengths


def recipe_values(run: str, *, short_len: int, start_len: int, target_len: int = 1024) -> dict:
    """A bench run's train-config values: a recipe, or a variant of one with keys of its own joined by
    '+': 'growlength+start_len=32+rope_theta=100000' is GrowLength from 32 with a RoPE base of 100k
    (so one bench can set variants side by side on the same machine and budget)."""
    name, *items = run.split("+")
    values = recipe(name, short_len=short_len, start_len=start_len, target_len=target_len)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise GrowLengthError(f"cannot read {item!r} in run {run!r}: write RECIPE+KEY=VALUE+...")
        values[key] = coerce(key, value)
    return values


def parse_sweep(text: str | None) -> list[dict]:
    """'lr=1e-3,2e-3 tokens_per_step=2048,8192' -> the 4 points of the grid, each typed; [{}] for none."""
    if not text:
        return [{}]
    axes = {}
    for item in text.split():
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise GrowLengthError(f"cannot read sweep axis {item!r}: write KEY=V1,V2,... e.g. lr=1e-3,2e-3")
        if key in axes:
            raise GrowLengthError(f"the sweep names {key!r} twice")
        axes[key] = [coerce(key, v) for v in values.split(",")]
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def point_label(point: dict) -> str:
    """A sweep point as text: {'lr': 0.002, 'tokens_per_step': 2048} -> 'lr=0.002 tokens_per_step=2048'."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items()) or "config"


def fields_of(cls: type = TrainConfig) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def field_type(name: str, cls: type = TrainConfig) -> type:
    """The field's own type, with `| None` stripped: int, float, bool or str."""
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def coerce(name: str, value, cls: type = TrainConfig):
    """value as the field's type; '2e8' and 2e8 are fine for an int field if they are whole."""
    if name not in fields_of(cls):
        raise _unknown(name, list(fields_of(cls)))
    if value is None:
        return None
    kind = field_type(name, cls)
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


def _unknown(key: str, known: list[str]) -> GrowLengthError:
    close = difflib.get_close_matches(key, known, n=1)
    return GrowLengthError(f"unknown config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))


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
    return load_sections(path, overrides, TrainConfig)[0]


def load_sections(path: str | Path | None, overrides: dict | None, *classes: type) -> tuple:
    """One YAML file (then the overrides) holding the keys of several configs (e.g. train and bench
    keys): each key goes to the first class that has it, typed by `coerce`; a key none has fails."""
    values = {**(read_yaml(path) if path else {}), **(overrides or {})}
    sections: list[dict] = [{} for _ in classes]
    for key, value in values.items():
        owner = next((i for i, cls in enumerate(classes) if key in fields_of(cls)), None)
        if owner is None:
            raise _unknown(key, [name for cls in classes for name in fields_of(cls)])
        sections[owner][key] = coerce(key, value, classes[owner])
    return tuple(cls(**section) for cls, section in zip(classes, sections, strict=True))


def parse_lengths(text: str, flag: str) -> list[int]:
    """'128,512,256' -> [128, 256, 512]; every length at least 2."""
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise GrowLengthError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 2:
        raise GrowLengthError(f"{flag} must be integers of at least 2, got {text!r}")
    return values


def save_config(cfg: TrainConfig, path: Path) -> None:
    """Beside and renamed (files.write_atomically): a resume never finds a config.yaml cut short."""
    write_atomically(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
