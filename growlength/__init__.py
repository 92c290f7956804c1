"""GrowLength: pretrain causal language models with a training length that grows in stages.

The core is small and pure: schedules (`schedule`), token accounting (`budget`) and the re-chunking
loader (`tokens`). `train.train` is the reference loop; the CLI is `growlength` / `python -m growlength`.
"""

from growlength.budget import Budget, StepShape, check_lengths, step_shape
from growlength.errors import GrowLengthError
from growlength.schedule import LengthSchedule, doubling_lengths, lr_at, make_schedule
from growlength.tokens import Loader, open_tokens

__all__ = [
    "Budget",
    "GrowLengthError",
    "LengthSchedule",
    "Loader",
    "StepShape",
    "check_lengths",
    "doubling_lengths",
    "lr_at",
    "make_schedule",
    "open_tokens",
    "step_shape",
]
