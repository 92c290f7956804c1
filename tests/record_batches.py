"""`growlength train` with the batches each rank reads recorded, for tests/test_distributed.py.

    python tests/record_batches.py train --config C --out DIR ...    (alone or under torchrun)

writes DIR/batches-rank<R>.npz: the input rows of every step, in order, as this rank read them.
"""

import os
import sys
from pathlib import Path

import numpy as np

import growlength.train
from growlength.cli import main


class RecordingLoader(growlength.train.Loader):
    batches: list[np.ndarray] = []

    def next_batch(self, *args, **kwargs):
        inputs, targets = super().next_batch(*args, **kwargs)
        RecordingLoader.batches.append(inputs.copy())
        return inputs, targets


if __name__ == "__main__":
    growlength.train.Loader = RecordingLoader
    code = main(sys.argv[1:])
    out = Path(sys.argv[sys.argv.index("--out") + 1])
    np.savez(out / f"batches-rank{os.environ.get('RANK', '0')}.npz", *RecordingLoader.batches)
    sys.exit(code)
