"""`growlength train` that SIGKILLs itself halfway through writing a checkpoint file, for
tests/test_resume.py:

    python tests/die_in_checkpoint.py N train --config C --out DIR ...

The N-th safetensors file the run writes gets half its bytes, then the process dies on the spot.
"""

import os
import signal
import sys

import growlength.checkpoint
from growlength.cli import main

calls = 0
save_file = growlength.checkpoint.save_file


def save_half_then_die(tensors, path):
    global calls
    calls += 1
    save_file(tensors, path)
    if calls == int(sys.argv[1]):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    growlength.checkpoint.save_file = save_half_then_die
    sys.exit(main(sys.argv[2:]))
