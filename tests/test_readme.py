"""Docs run: every ```python block of the README executes, and every command it names is one we ship.

(```py blocks are excerpts that need a trained run or a model: tests/test_export.py and
tests/test_hf_trainer.py run the same code for real.)"""

import re
import shlex
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "[128, 256, 1024]" in out
    assert "\n32 16 2 8192\n" in out


def test_doc_flags_exist():
    """Every `--flag` the README and docs/*.md name is a flag of some command (or of torchrun/accelerate)."""
    from growlength.cli import _parser

    commands = _parser()._subparsers._group_actions[0].choices
    every_help = "".join(sub.format_help() for sub in commands.values())
    root = Path(__file__).parent.parent
    docs = README + "".join(doc.read_text() for doc in sorted((root / "docs").glob("*.md")))
    flags = set(re.findall(r"`(--[a-zA-Z_-]+)", docs))
    assert len(flags) > 40
    launchers = {"--standalone", "--nproc_per_node", "--num_processes"}  # torchrun's and accelerate's
    missing = [f for f in flags - {"--FLAG", *launchers} if f not in every_help]
    assert not missing


def _shell_lines(text: str) -> list[list[str]]:
    """Each command line of shell text as its arguments: continuations joined, comments dropped."""
    return [shlex.split(line, comments=True) for line in text.replace("\\\n", " ").splitlines()]


def _growlength_args(argv: list[str]) -> list[str] | None:
    """The growlength arguments of a command line: `growlength ...`, or a launcher's `... -m growlength ...`
    (torchrun, accelerate launch, python); None for any other line."""
    if argv[:1] == ["growlength"]:
        return argv[1:]
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m" and argv[i + 1] == "growlength":
            return argv[i + 2 :]
    return None


def _doc_commands() -> list[tuple[str, list[str]]]:
    """Every growlength command line of a ```bash block in the README and docs/*.md, launched directly or
    under torchrun or accelerate, but the synopsis lines, whose [optional] parts are not arguments."""
    root = Path(__file__).parent.parent
    found = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for argv in _shell_lines(block):
                args = _growlength_args(argv)
                if args is not None and not any(a.startswith("[") or a == "..." for a in argv):
                    found.append((doc.name, args))
    # and the GPU script's commands, cut at their redirection: a typo there would waste a lent GPU's minutes
    script = root / "scripts" / "device-bench.sh"
    for argv in _shell_lines(script.read_text()):
        if "growlength" in argv and argv[argv.index("growlength") - 1] == "-m":
            argv = argv[argv.index("growlength") + 1 :]
            redirected = [i for i, arg in enumerate(argv) if arg in (">", ">>", "2>&1", "|", "||")]
            found.append((script.name, argv[: redirected[0]]))
    return found


def test_doc_commands_parse_and_their_configs_load():
    """The commands people copy from the docs: the CLI takes them, their models exist, and a bench's
    config with its flags loads (recipe names, sweep and every train key are checked as the bench checks them)."""
    from growlength.cli import _overrides, _parser
    from growlength.config import BenchConfig, TrainConfig, load_config, load_sections
    from growlength.errors import GrowLengthError
    from growlength.models import PRESETS

    commands = _doc_commands()
    assert len({doc for doc, _ in commands}) >= 3 and sum(argv[0] == "bench" for _, argv in commands) >= 4
    assert [argv[0] for doc, argv in commands if doc == "device-bench.sh"] == ["profile", "profile", "bench"]
    launched = [argv for doc, argv in commands if doc == "guarantees.md" and argv[0] == "train"]
    assert any("configs/gpu-160m.yaml" in argv for argv in launched)  # the torchrun line is among them
    for doc, argv in commands:
        try:
            args = _parser().parse_args(argv)
        except SystemExit:
            raise AssertionError(f"{doc}: growlength {shlex.join(argv)} does not parse") from None
        model = getattr(args, "model", None)
        assert model is None or model in PRESETS or model.endswith(".json"), f"{doc}: no model {model!r}"
        config = Path(__file__).parent.parent / args.config if getattr(args, "config", None) else None
        if argv[0] == "bench":
            load_sections(config, _overrides(args, TrainConfig, BenchConfig), TrainConfig, BenchConfig)
        elif argv[0] == "train" and config is not None and args.config.startswith("configs/"):
            try:  # a shipped config, as `train` loads it (a bench config's keys are refused there)
                load_config(config, _overrides(args, TrainConfig))
            except GrowLengthError as e:
                raise AssertionError(f"{doc}: growlength {shlex.join(argv)}: {e}") from None
