"""Docs run: every ```python block of the README executes, and every command it names is one we ship.

(```py blocks are excerpts that need a trained run or a model: tests/test_export.py and
tests/test_hf_trainer.py run the same code for real.)"""

import re
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "[128, 256, 1024]" in out
    assert "StepShape(seq_len=256, rows=32, micro_rows=16, accum=2, row_stride=256, samples=0)" in out


def test_readme_flags_exist():
    from growlength.cli import _parser

    commands = _parser()._subparsers._group_actions[0].choices
    every_help = "".join(sub.format_help() for sub in commands.values())
    flags = set(re.findall(r"`(--[a-zA-Z_-]+)", README))
    assert len(flags) > 15
    launchers = {"--standalone", "--nproc_per_node", "--num_processes"}  # torchrun's and accelerate's
    missing = [f for f in flags - {"--FLAG", *launchers} if f not in every_help]
    assert not missing
