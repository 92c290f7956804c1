"""Docs run: every ```python block of the README executes, and every command it names is one we ship."""

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
    assert "StepShape(seq_len=256, rows=32, micro_rows=16, accum=2, row_stride=256)" in out


def test_readme_flags_exist():
    from growlength.cli import _parser

    commands = _parser()._subparsers._group_actions[0].choices
    every_help = "".join(sub.format_help() for sub in commands.values())
    flags = set(re.findall(r"`(--[a-zA-Z_-]+)", README))
    assert len(flags) > 15
    torchrun = {"--standalone", "--nproc_per_node"}
    missing = [f for f in flags - {"--FLAG", *torchrun} if f not in every_help]
    assert not missing
