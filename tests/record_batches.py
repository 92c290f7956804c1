"""`growlength train` with what each rank did recorded, for tests/test_distributed.py.

    python tests/record_batches.py train --config C --out DIR ...    (alone or under torchrun)

writes, for rank R:
    DIR/batches-rank<R>.npz  the input rows of every step, in order, as this rank trained on them
    DIR/ranks-rank<R>.json   {"gathers": all-gathers in each training step (FSDP's parameter gathers),
                              "read": checkpoint files this rank opened}
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch.distributed

import growlength.checkpoint
import growlength.train
from growlength.cli import main


def recording_batches(take_batch, batches: list[np.ndarray]):
    """take_batch, keeping the inputs each step trains on (reads ahead for a guess that missed are not)."""

    def take(*args, **kwargs):
        parts_BT1 = take_batch(*args, **kwargs)
        batches.append(parts_BT1[0][:, :-1].numpy().copy())
        return parts_BT1

    return take


def counting(function, counter: list[int]):
    def counted(*args, **kwargs):
        counter[0] += 1
        return function(*args, **kwargs)

    return counted


def recording_step(train_step, gathers: list[int], counter: list[int]):
    def step(*args, **kwargs):
        before = counter[0]
        result = train_step(*args, **kwargs)
        gathers.append(counter[0] - before)
        return result

    return step


def recording_reads(function, read: list[str]):
    def reading(path, *args, **kwargs):
        read.append(Path(path).name)
        return function(path, *args, **kwargs)

    return reading


if __name__ == "__main__":
    counter, gathers, read, batches = [0], [], [], []
    growlength.train.take_batch = recording_batches(growlength.train.take_batch, batches)
    for name in ("all_gather_single", "all_gather_into_tensor", "all_gather"):  # FSDP2 calls one (by version)
        if hasattr(torch.distributed, name):
            setattr(torch.distributed, name, counting(getattr(torch.distributed, name), counter))
    growlength.train.train_step = recording_step(growlength.train.train_step, gathers, counter)
    for name in ("read_state", "_read_safetensors", "file_sha256"):
        setattr(growlength.checkpoint, name, recording_reads(getattr(growlength.checkpoint, name), read))
    code = main(sys.argv[1:])
    out = Path(sys.argv[sys.argv.index("--out") + 1])
    rank = os.environ.get("RANK", "0")
    np.savez(out / f"batches-rank{rank}.npz", *batches)
    (out / f"ranks-rank{rank}.json").write_text(json.dumps({"gathers": gathers, "read": read}))
    sys.exit(code)
