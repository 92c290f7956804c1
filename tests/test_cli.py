"""The command line as a user meets it: real subprocesses for the error paths, in-process for the rest."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import CHILD_ENV, tiny_config

from growlength.cli import main
from growlength.config import save_config

TINY = [
    "--model",
    "tiny",
    "--start-len",
    "64",
    "--target-len",
    "256",
    "--tokens-per-step",
    "2048",
    "--eval-tokens",
    "2048",
    "--block-tokens",
    "1024",
]


def growlength(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "growlength", *map(str, args)],
        capture_output=True,
        text=True,
        env=CHILD_ENV,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(corpus),
                "--out",
                str(out),
                *TINY,
                "--budget-steps",
                "12",
                "--evals",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    return out


def test_eval_prints_and_writes_loss_and_perplexity_per_length(trained, capsys):
    assert main(["eval", "--ckpt", str(trained), "--lengths", "64,256,512", "--eval-tokens", "2048"]) == 0
    out = capsys.readouterr().out
    assert "(beyond the longest trained length)" in out.splitlines()[-2]
    report = json.loads((trained / "checkpoints" / "step_00000012" / "eval.json").read_text())
    rows = {r["seq_len"]: r for r in report["results"]}
    assert rows.keys() == {64, 256, 512}
    assert rows[512]["beyond_trained"] and not rows[256]["beyond_trained"]
    assert all(r["ppl"] == pytest.approx(np.exp(r["loss"])) for r in rows.values())
    # the loss at the trained length equals the one training logged for the same tokens
    logged = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()][-1]
    assert rows[256]["loss"] == pytest.approx(logged["val_loss_by_len"]["256"], rel=1e-5)


def test_plot_writes_a_png(trained, tmp_path, capsys):
    assert main(["plot", str(trained), str(trained), "--out", str(tmp_path / "loss.png")]) == 0
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_python_dash_m_and_the_embedded_default(tmp_path):
    """`python -m growlength train` with no data given prepares and uses the embedded corpus."""
    result = growlength(
        "train",
        "--out",
        tmp_path / "default",
        "--model",
        "tiny",
        "--budget-steps",
        "1",
        "--evals",
        "1",
        "--eval-tokens",
        "1024",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert "done: step 1, 8,192 tokens" in result.stdout
    assert (tmp_path / "default" / "config.yaml").read_text().startswith("data: shakespeare")


def bad_config_json(tmp_path):
    path = tmp_path / "small-vocab.json"
    path.write_text(
        json.dumps(
            {
                "model_type": "llama",
                "vocab_size": 100,
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 64,
            }
        )
    )
    return path


def truncated_copy(corpus, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("meta.json", "val.bin", "tokenizer.json"):
        (broken / name).write_bytes((corpus / name).read_bytes())
    (broken / "train.bin").write_bytes((corpus / "train.bin").read_bytes()[:1000])
    return broken


def tiny_corpus(corpus, tmp_path):
    small = tmp_path / "small-data"
    code = main(
        [
            "prepare",
            "--input",
            str(corpus / "tokenizer.json").replace("tokenizer.json", "meta.json"),
            "--out",
            str(small),
        ]
    )
    assert code == 2  # a .json that is not a dataset: refused (exercised here for free)
    (tmp_path / "few.txt").write_text("A few words of text.\n" * 150)
    assert (
        main(
            [
                "prepare",
                "--input",
                str(tmp_path / "few.txt"),
                "--out",
                str(small),
                "--val-fraction",
                "0.4",
                "--tokenizer",
                str(corpus / "tokenizer.json"),
            ]
        )
        == 0
    )
    return small


BAD = {
    "shrinking stages": (["--schedule", "stages", "--stages", "256:0.5,128:0.5"], "never shrinks"),
    "zero length": (["--start-len", "0"], "must be positive"),
    "beyond the model": (
        ["--target-len", "4096", "--block-tokens", "4096", "--tokens-per-step", "8192"],
        "exceeds the model's 2048 positions",
    ),
    "not divisible": (["--tokens-per-step", "3000"], "does not split into whole rows"),
    "unknown key": (["--config", "{typo}"], "did you mean 'target_len'"),
    "wrong type": (["--budget-steps", "ten"], "must be int"),
    "two budgets": (["--budget-steps", "3", "--budget-tokens", "9000"], "give one budget"),
    "bad yaml": (["--config", "{badyaml}"], "not valid YAML"),
    "missing data": (["--data", "{nowhere}"], "run `growlength prepare"),
    "truncated tokens": (["--data", "{broken}"], "truncated"),
    "corpus too small": (["--data", "{small}"], "fewer than one step at seq_len 256"),
    "vocab too small": (["--model", "{smallvocab}"], "raise vocab_size"),
    "unknown model": (["--model", "gpt-5"], "unknown model 'gpt-5'"),
}


@pytest.fixture(scope="module")
def bad_inputs(corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "typo.yaml").write_text("taget_len: 512\n")
    (tmp / "bad.yaml").write_text("model: [tiny\n")
    return {
        "typo": tmp / "typo.yaml",
        "badyaml": tmp / "bad.yaml",
        "nowhere": tmp / "nowhere",
        "broken": truncated_copy(corpus, tmp),
        "small": tiny_corpus(corpus, tmp),
        "smallvocab": bad_config_json(tmp),
    }


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gets_one_line_and_a_nonzero_exit_before_any_work(case, corpus, bad_inputs, tmp_path, capsys):
    flags, message = BAD[case]
    flags = [f.format(**bad_inputs) for f in flags]
    args = ["train", "--data", str(corpus), "--out", str(tmp_path / "run"), *TINY, "--budget-steps", "2", *flags]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert message in err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_errors_in_a_subprocess_have_no_traceback(corpus, tmp_path):
    result = growlength("train", "--data", corpus, "--out", tmp_path / "r", *TINY, "--tokens-per-step", "3000")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "Traceback" not in result.stderr and "does not split into whole rows" in result.stderr


def test_an_existing_run_needs_resume_and_the_same_config(corpus, trained, tmp_path, capsys):
    assert main(["train", "--data", str(corpus), "--out", str(trained), *TINY, "--budget-steps", "12"]) == 2
    assert "add --resume" in capsys.readouterr().err
    assert main(["train", "--out", str(trained), "--resume", "--lr", "0.5"]) == 2
    assert "different config (lr)" in capsys.readouterr().err


def test_resume_without_changes_finishes_a_finished_run(trained, capsys):
    assert main(["train", "--out", str(trained), "--resume", "--quiet"]) == 0
    assert "done: step 12" in capsys.readouterr().out


def test_every_shipped_config_parses(tmp_path):
    from pathlib import Path

    from growlength.bench import BENCH_FIELDS, load_bench_config
    from growlength.config import TrainConfig, load_config, read_yaml

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        is_bench = bool(BENCH_FIELDS & read_yaml(path).keys())
        load_bench_config(path, {}) if is_bench else load_config(path)
    # `growlength train` with no config runs the demo
    assert load_config(Path(__file__).parent.parent / "configs" / "demo.yaml") == TrainConfig()
    save_config(tiny_config("x"), tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == tiny_config("x")
