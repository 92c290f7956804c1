"""What a config resolves to, checked before any work starts: the data, schedule, budget, model config
and step shapes (`preflight`), the run folder, and the device. Every bad input fails here, in one line."""

import dataclasses
import functools
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from growlength import dist
from growlength.buckets import bucket_starts
from growlength.budget import Budget, StepShape, check_lengths, step_shape
from growlength.config import TrainConfig, load_config
from growlength.errors import GrowLengthError
from growlength.models import (
    check_fits,
    flush_denormals,
    init_config,
    is_encoder,
    model_config,
    same_tokenizer,
    trained_context,
)
from growlength.prepare import resolve_data
from growlength.rope import parse_rope_scaling, parse_rope_theta, rope_parameters_at
from growlength.schedule import LengthSchedule, dd_lengths, make_schedule
from growlength.tokens import TokenData, open_tokens


@dataclass(frozen=True)
class Preflight:
    """What a config resolves to once checked: the data, schedule, budget, model config, step shapes."""

    data: TokenData
    schedule: LengthSchedule
    budget: Budget
    model_cfg: object
    shapes: list[StepShape]
    buckets: dict[int, np.ndarray] | None = None  # Dataset Decomposition's chunk starts, for `dd`
    rope_at: Callable[[int], dict] | None = None  # seq_len -> the RoPE parameters to train with


def preflight(cfg: TrainConfig, data_path: Path, world_size: int = 1) -> Preflight:
    """Every check bad input can fail, before any work starts; raises GrowLengthError with the fix."""
    data = open_tokens(data_path)
    buckets = _buckets(cfg, data) if cfg.schedule == "dd" else None
    schedule = make_schedule(
        cfg.schedule,
        start_len=cfg.start_len,
        target_len=cfg.target_len,
        stages=cfg.stages,
        ramp=cfg.ramp,
        multiple=cfg.multiple,
        degree=cfg.degree,
        total_steps=cfg.budget_steps,
        dd_shares=_shares(buckets) if buckets else (),
        seed=cfg.seed,
    )
    budget = Budget(steps=cfg.budget_steps, tokens=cfg.budget_tokens, seconds=cfg.budget_seconds)
    model_cfg = run_model_config(cfg, data)
    if schedule.max_len > cfg.target_len:
        raise GrowLengthError(
            f"the schedule reaches seq_len {schedule.max_len}, beyond target_len {cfg.target_len}: "
            "raise target_len (the length the model is built for and evaluated at)"
        )
    check_fits(model_cfg, cfg.target_len)
    if (cfg.objective == "mlm") != is_encoder(model_cfg):
        kind = "an encoder (modernbert-tiny, modernbert-small)" if cfg.objective == "mlm" else "a causal LM"
        raise GrowLengthError(
            f"objective {cfg.objective} trains {kind}; model {cfg.model} is a {model_cfg.model_type}: "
            "choose a model for the objective, or the objective for the model"
        )
    rope_at = _position_policy(cfg, model_cfg)
    shapes = _step_shapes(cfg, schedule, world_size)
    _check_corpus(data, max(shapes, key=lambda s: (s.consumed, s.seq_len)), cfg.target_len)
    model_cfg.rope_parameters = rope_at(schedule.all_lengths()[0])
    return Preflight(data, schedule, budget, model_cfg, shapes, buckets, rope_at)


def _step_shapes(cfg: TrainConfig, schedule: LengthSchedule, world_size: int) -> list[StepShape]:
    """The step shape at every length the schedule can give; stages may set their own tokens per step."""
    shape = dict(
        target_len=cfg.target_len,
        micro_batch_tokens=cfg.micro_batch_tokens,
        world_size=world_size,
        batch_policy=cfg.batch_policy,
    )
    if not schedule.stage_tokens:
        return check_lengths(schedule.all_lengths(), tokens_per_step=cfg.tokens_per_step, **shape)
    shapes = []
    for seq_len in schedule.lengths:
        tokens = schedule.tokens_per_step(seq_len, cfg.tokens_per_step)
        try:
            shapes.append(step_shape(seq_len, tokens_per_step=tokens, **shape))
        except GrowLengthError as e:
            raise GrowLengthError(f"stage {seq_len}: {e}") from None
    return shapes


def run_model_config(cfg: TrainConfig, data: TokenData):
    """The preset's (or config.json's) config, or the --init-from folder's, whose tokenizer must be the data's."""
    if not cfg.init_from:
        return model_config(cfg.model, vocab_size=data.vocab_size, eos_id=int(data.meta["eos_id"]))
    model_cfg = init_config(cfg.init_from, vocab_size=data.vocab_size, target_len=cfg.target_len)
    theirs, ours = Path(cfg.init_from) / "tokenizer.json", data.path / "tokenizer.json"
    if not theirs.is_file():
        raise GrowLengthError(f"--init-from {cfg.init_from} has no tokenizer.json to check against the data's")
    if not same_tokenizer(theirs, ours):
        raise GrowLengthError(
            f"--init-from {cfg.init_from}: its tokenizer is not the one {data.path} was prepared with; "
            f"prepare the text with `growlength prepare --tokenizer {theirs}`"
        )
    return model_cfg


def _position_policy(cfg: TrainConfig, model_cfg) -> Callable[[int], dict]:
    """seq_len -> the RoPE parameters to train at (rope.py): the model's, changed by rope_theta
    and rope_scaling."""
    mode, original = parse_rope_scaling(cfg.rope_scaling)
    if mode == "yarn" and original is None:
        original = trained_context(cfg.init_from)
        if original is None:
            raise GrowLengthError(f"{cfg.init_from} does not say how long it was trained: give yarn:LENGTH")
    if mode == "yarn" and original >= cfg.target_len:
        raise GrowLengthError(f"rope_scaling yarn from {original}: the target {cfg.target_len} is not beyond it")
    return functools.partial(
        rope_parameters_at,
        dict(model_cfg.rope_parameters),
        thetas=parse_rope_theta(cfg.rope_theta),
        yarn_original=original if mode == "yarn" else None,
    )


def _buckets(cfg: TrainConfig, data: TokenData) -> dict[int, np.ndarray]:
    if cfg.batch_policy != "tokens":
        raise GrowLengthError("schedule dd holds the tokens of every step constant: use batch_policy tokens")
    lengths = dd_lengths(cfg.start_len, cfg.target_len)
    low, high = lengths[0].bit_length() - 1, lengths[-1].bit_length() - 1
    return bucket_starts(data.train, int(data.meta["eos_id"]), low, high, cfg.seed)


def _shares(buckets: dict[int, np.ndarray]) -> tuple[float, ...]:
    tokens = [len(starts) << k for k, starts in sorted(buckets.items())]
    return tuple(t / sum(tokens) for t in tokens)


# How a run is launched, not what it trains: a resumed run may change these.
LAUNCH_FIELDS = ("device", "parallel", "log_to", "wandb_project", "log_every_seconds", "peak_tflops")


def resolve_config(cfg: TrainConfig | None, out: Path, resume: bool) -> TrainConfig:
    """The config to run: the given one for a new run; the saved one (which a given one must match,
    but for the launch fields) when resuming."""
    saved_path = out / "config.yaml"
    has_run = saved_path.is_file() or (out / "checkpoints").is_dir()
    if has_run and not resume:
        raise GrowLengthError(f"{out} already holds a run: add --resume to continue it, or choose a new --out")
    if resume and saved_path.is_file():
        saved = load_config(saved_path)
        given = cfg.to_dict() if cfg is not None else saved.to_dict()
        diff = [k for k, v in given.items() if saved.to_dict()[k] != v and k not in LAUNCH_FIELDS]
        if diff:
            raise GrowLengthError(
                f"{out} holds a run with a different config ({', '.join(diff)}): resume it with no "
                f"overrides but {' or '.join(LAUNCH_FIELDS)}, or train into a new --out"
            )
        cfg = dataclasses.replace(saved, **{k: given[k] for k in LAUNCH_FIELDS})
    if cfg is None:
        raise GrowLengthError(f"nothing to resume in {out}: it holds no config.yaml")
    return cfg


def data_path(cfg: TrainConfig, world: dist.World) -> Path:
    """The prepared folder; the embedded corpus is prepared on first use, once per machine (by each
    node's local rank 0, into that machine's cache)."""
    if world.local_rank == 0:
        resolve_data(cfg.data, cfg.vocab_size)
    dist.barrier()
    return resolve_data(cfg.data, cfg.vocab_size)


def _check_corpus(data: TokenData, biggest: StepShape, target_len: int) -> None:
    """Every id within the vocabulary; one step of the hungriest shape fits in the train split, one
    target window in val."""
    for split in ("train", "val"):
        top = data.max_id(split)
        if top >= data.vocab_size:
            raise GrowLengthError(
                f"{data.path}: the {split} split holds token id {top}, beyond vocab_size {data.vocab_size} "
                "in meta.json: the token files come from another tokenizer; prepare the data again"
            )
    if len(data.train) < biggest.consumed + 1:
        raise GrowLengthError(
            f"the train split has {len(data.train)} tokens, fewer than one step at seq_len {biggest.seq_len} "
            f"needs ({biggest.consumed + 1}): give more text or lower tokens_per_step"
        )
    if len(data.val) < target_len + 1:
        raise GrowLengthError(
            f"the val split has {len(data.val)} tokens, too few for one window of {target_len}: "
            "prepare with a larger --val-fraction"
        )


def device_for(name: str) -> torch.device:
    """The device for `auto`, `cpu` or `cuda`: on CUDA, this process's GPU, `cuda:LOCAL_RANK` (torchrun
    gives each process its own; without torchrun 0), made the current device before anything touches
    CUDA, as torchtitan does, so each rank's model, batches and nccl communicator land on its own GPU.
    On the CPU, subnormal floats are flushed to zero first (see models.flush_denormals), before the
    first parallel op creates the worker threads. On CUDA, before the first allocation: expandable
    segments (lengths that change from stage to stage then reuse one growing segment instead of
    fragmenting the cache), unless the user set the allocator's options. Float32 matmuls stay full
    float32, not TF32: what bf16 autocast leaves in fp32 is small, and transformers 5.17 computes RoPE's
    angles as an fp32 matmul (5.23 multiplies), which TF32 rounds to 10 bits of mantissa, so a position
    past 2,048 would get another's angle (transformers#48428)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise GrowLengthError("device cuda asked for, but torch sees no GPU: use --device cpu")
    if name == "cpu":
        flush_denormals()
        return torch.device("cpu")
    if not {"PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"} & set(os.environ):
        os.environ["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank >= torch.cuda.device_count():
        raise GrowLengthError(
            f"LOCAL_RANK {local_rank} but torch sees {torch.cuda.device_count()} GPUs: start at most one "
            "process per GPU (torchrun --nproc_per_node)"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def check_attention(name: str, device: torch.device) -> None:
    """flash_attention_2 needs its package and a GPU; say so before any work starts."""
    if name == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise GrowLengthError("attn_implementation flash_attention_2 needs `pip install flash-attn`")
        if device.type != "cuda":
            raise GrowLengthError("attn_implementation flash_attention_2 runs on CUDA only: use sdpa on the CPU")
