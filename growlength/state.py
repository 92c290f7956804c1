"""The state of a training run, in one place: `Progress` (the counters a checkpoint saves) and `Run`
(everything the loop works with). train.py builds and changes them; steplog and profile read them."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from growlength import dist
from growlength.adaptive import StageWatch
from growlength.buckets import BucketLoader
from growlength.budget import Budget, StepShape
from growlength.config import TrainConfig
from growlength.evaluate import autocast_context
from growlength.schedule import LengthSchedule
from growlength.tokens import Loader, TokenData
from growlength.trackers import NoTrackers, Trackers


@dataclass
class Progress:
    """Where the run is, in the budget's units; saved in every checkpoint."""

    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    last_step_s: float = 0.0
    evals: int = 0
    last_eval_step: int = -1
    seq_lens: list[int] = field(default_factory=list)
    step_s_by_len: dict[str, float] = field(default_factory=dict)  # the last step's seconds at each length
    recent: list[tuple[int, float]] = field(default_factory=list)  # (seq_len, loss) of the last 6 steps
    compiles: int = 0  # graphs torch.compile built (each process builds its own: a resume adds more)
    compile_s: float = 0.0  # seconds spent compiling, part of `seconds`
    last_compile_s: float = 0.0  # of which in the last step
    planned_tokens_per_s: dict[str, float] = field(default_factory=dict)  # what auto (or dd's cycles) planned from
    planned_seconds: float = 0.0  # dd under seconds: what planned_tokens_per_s gave the steps taken
    watch: StageWatch | None = None  # --schedule adaptive: the history its decisions are taken from


@dataclass(frozen=True)
class Ahead:
    """A batch read ahead for the step shape the next step was expected to take, and the loader's state
    before the read: a checkpoint saves that state, and a wrong guess puts it back, so reading ahead
    never changes which tokens a step trains on."""

    shape: StepShape
    loader_state: dict
    cursor: int  # the loader's tokens read before it
    parts_BT1: list[torch.Tensor]  # per part, rows of seq_len + 1 tokens: inputs [:, :-1], targets [:, 1:]


@dataclass(kw_only=True)
class Run:
    cfg: TrainConfig
    out: Path
    data: TokenData
    schedule: LengthSchedule
    budget: Budget
    shape_by_len: dict[int, StepShape]  # the step shape at each length of the schedule
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: Loader | BucketLoader
    device: torch.device
    world: dist.World
    progress: Progress = field(default_factory=Progress)
    trackers: Trackers | NoTrackers = field(default_factory=NoTrackers)
    last_eval: dict = field(default_factory=dict)
    checkpointed_step: int = -1  # the step of the newest checkpoint this run wrote or resumed from
    ahead: Ahead | None = None  # the next step's batch, read while the device finished this step
    flops_by_len: dict[int, float] = field(default_factory=dict)  # training FLOPs per token
    peak_flops: float | None = None  # the device's, for MFU; None where unknown
    compile_seen: tuple[int, float] = (0, 0.0)  # this process's compile_stats() after the last step
    rope_at: Callable[[int], dict] | None = None  # seq_len -> RoPE parameters (the position policy)
    # the fraction of the budget the length schedule is at (step=, tokens=, seconds=): the budget's own,
    # but for dd under a seconds budget, its tokens (buckets.token_fraction)
    length_fraction: Callable[..., float] | None = None

    def autocast(self):
        return autocast_context(self.device)
