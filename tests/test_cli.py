"""The command line as a user meets it: real subprocesses for the error paths, in-process for the rest."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import CHILD_ENV, tiny_config

from growlength.cli import main
from growlength.config import save_config
from growlength.errors import GrowLengthError

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
        timeout=900,
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
    assert "(beyond the longest trained length)" in out.splitlines()[-3]
    assert out.splitlines()[-2].startswith("loss by position at 512 (none): 1-64 ")
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


def damaged_copy(corpus, folder, name, damage):
    """A copy of the prepared corpus with one file's bytes passed through damage."""
    folder.mkdir()
    for path in corpus.iterdir():
        data = path.read_bytes()
        (folder / path.name).write_bytes(damage(data) if path.name == name else data)
    return folder


def id_beyond_vocab(data: bytes) -> bytes:
    """meta.json of shards from a larger tokenizer than its vocab_size says (ids up to 600 of 512)."""
    meta = json.loads(data)
    meta["shards"]["train"][0]["max_id"] = 600
    return json.dumps(meta).encode()


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


# The bad-input catalogue of `growlength train`: flags -> the words the one error line must hold.
BAD = {
    "shrinking stages": (["--schedule", "stages", "--stages", "256:0.5,128:0.5"], "never shrinks"),
    "unreadable stages": (["--schedule", "stages", "--stages", "128-0.5"], "write LENGTH:SHARE"),
    "shares not summing to 1": (["--schedule", "stages", "--stages", "64:0.5,256:0.2"], "sum to 1"),
    "unknown schedule": (["--schedule", "cubic"], "choose one of doubling, linear"),
    "unknown batch policy": (["--batch-policy", "odd"], "batch_policy must be one of"),
    "negative budget": (["--budget-steps", "-3"], "budget_steps must be positive"),
    "negative lr": (["--lr", "-1"], "lr must be in [0, 1]"),
    "warmup beyond the run": (["--warmup", "1.5"], "warmup must be in [0, 0.99]"),
    "unknown parallel": (["--parallel", "tp"], "parallel must be ddp or fsdp"),
    "code in the YAML": (["--config", "{evil}"], "could not determine a constructor"),
    "unwritable out folder": (["--out", "{afile}/run"], "cannot write to"),
    "token id beyond the vocabulary": (["--data", "{badid}"], "token id 600, beyond vocab_size 512"),
    "meta.json not JSON": (["--data", "{notjson}"], "is not valid JSON"),
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
    "a root of degree 0": (["--schedule", "root", "--degree", "0"], "degree must be in [1, inf]"),
    "a ramp beyond the run": (["--schedule", "linear", "--ramp", "1.5"], "ramp must be in [0, 1]"),
    "a negative auto power": (["--schedule", "auto", "--auto-power", "-1"], "auto_power must be in [0, inf]"),
    "an unknown tracker": (["--log-to", "mlflow"], "log_to names 'mlflow'"),
    "checkpoints every 0 steps": (["--checkpoint-every", "0"], "checkpoint_every must be in [1, inf]"),
    "a negative loss chunk": (["--loss-chunk-tokens", "-8"], "loss_chunk_tokens must be in [0, inf]"),
}

# Of these, the ones a config must refuse as it loads (before any data is opened), not later
AT_LOAD = [
    "shrinking stages",
    "unreadable stages",
    "shares not summing to 1",
    "unknown schedule",
    "unknown batch policy",
    "a root of degree 0",
    "a ramp beyond the run",
    "a negative auto power",
    "an unknown tracker",
    "checkpoints every 0 steps",
    "a negative loss chunk",
]


@pytest.mark.parametrize("case", AT_LOAD)
def test_bad_values_fail_when_the_config_loads(case):
    from growlength.config import load_config

    flags, message = BAD[case]
    overrides = {flag[2:].replace("-", "_"): value for flag, value in zip(flags[::2], flags[1::2], strict=True)}
    with pytest.raises(GrowLengthError, match=re.escape(message)):
        load_config(None, {"data": "nowhere", **overrides})


@pytest.fixture(scope="module")
def bad_inputs(corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "typo.yaml").write_text("taget_len: 512\n")
    (tmp / "bad.yaml").write_text("model: [tiny\n")
    (tmp / "evil.yaml").write_text(f'!!python/object/apply:os.mkdir ["{tmp / "pwned"}"]\n')
    (tmp / "afile").write_text("a file, not a folder")
    return {
        "typo": tmp / "typo.yaml",
        "badyaml": tmp / "bad.yaml",
        "evil": tmp / "evil.yaml",
        "afile": tmp / "afile",
        "nowhere": tmp / "nowhere",
        "broken": damaged_copy(corpus, tmp / "broken", "train-00000.bin", lambda data: data[:1000]),
        "badid": damaged_copy(corpus, tmp / "badid", "meta.json", id_beyond_vocab),
        "notjson": damaged_copy(corpus, tmp / "notjson", "meta.json", lambda data: data[:20]),
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
    assert not (bad_inputs["evil"].parent / "pwned").exists()  # no code ran


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

    from growlength.config import BenchConfig, TrainConfig, fields_of, load_config, load_sections, read_yaml

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        is_bench = bool(fields_of(BenchConfig).keys() & read_yaml(path).keys())
        load_sections(path, {}, TrainConfig, BenchConfig) if is_bench else load_config(path)
    # `growlength train` with no config runs the demo
    assert load_config(Path(__file__).parent.parent / "configs" / "demo.yaml") == TrainConfig()
    save_config(tiny_config("x"), tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == tiny_config("x")


def test_one_config_path_for_train_bench_and_profile(tmp_path):
    from growlength.config import BenchConfig, ProfileConfig, TrainConfig, load_config, load_sections

    path = tmp_path / "bench.yaml"
    path.write_text("lr: 3e-3\nrepeats: '3'\nsweep: lr=1e-3,2e-3\nequal_tokens: yes\nrounds: 2\n")
    train, bench, prof = load_sections(path, {"budget_steps": "2e2"}, TrainConfig, BenchConfig, ProfileConfig)
    assert (train.lr, train.budget_steps, bench.repeats, bench.equal_tokens, prof.rounds) == (
        3e-3,
        200,
        3,
        True,
        2,
    )
    with pytest.raises(GrowLengthError, match="unknown config key 'repeats'"):
        load_config(path)  # bench keys are not train keys
    with pytest.raises(GrowLengthError, match="did you mean 'repeats'"):
        load_sections(None, {"repeat": 2}, TrainConfig, BenchConfig)
    with pytest.raises(GrowLengthError, match="config key 'rounds' must be int"):
        load_sections(None, {"rounds": "many"}, TrainConfig, ProfileConfig)


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("train", ["--tokens-per-step INT", "(default: 8192)", "(default: none)"]),
        ("bench", ["--sweep STR", "--repeats INT", "(default: 2)", "--equal-tokens [BOOL]", "--lr FLOAT"]),
        ("profile", ["--rounds INT", "(default: 5)", "--lengths STR", "--target-len INT"]),
    ],
)
def test_help_shows_every_key_with_its_default(command, shown, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert all(words in text for words in shown), [w for w in shown if w not in text]


# The catalogue for the other commands: argv -> the words the one error line must hold.
BAD_COMMANDS = {
    "prepare an empty file": (["prepare", "--input", "{empty}", "--out", "{out}"], "no text found"),
    "prepare a missing input": (["prepare", "--input", "{nowhere}", "--out", "{out}"], "does not exist"),
    "prepare a .pdf": (["prepare", "--input", "{pdf}", "--out", "{out}"], "use .txt, .md, .jsonl"),
    "prepare a tiny vocabulary": (["prepare", "--vocab-size", "10", "--out", "{out}"], "at least 258"),
    "prepare val fraction 1.5": (["prepare", "--val-fraction", "1.5", "--out", "{out}"], "must be in (0, 1)"),
    "prepare with a broken tokenizer": (["prepare", "--tokenizer", "{pdf}", "--out", "{out}"], "cannot read"),
    "prepare a vocabulary of 'ten'": (["prepare", "--vocab-size", "ten", "--out", "{out}"], "must be int"),
    "prepare shards of 0 tokens": (["prepare", "--shard-tokens", "0", "--out", "{out}"], "shard_tokens must be"),
    "eval a missing checkpoint": (["eval", "--ckpt", "{nowhere}"], "no checkpoint in"),
    "eval a damaged checkpoint": (["eval", "--ckpt", "{damaged}"], "does not match its checksum"),
    "eval at length 0": (["eval", "--ckpt", "{trained}", "--lengths", "0"], "integers of at least 2"),
    "plot a folder with no run": (["plot", "{nowhere}", "--out", "{out}"], "no metrics.jsonl"),
}


@pytest.mark.parametrize("case", BAD_COMMANDS)
def test_bad_input_to_other_commands(case, trained, tmp_path, capsys):
    import shutil

    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "x.pdf").write_text("%PDF-1.4")
    damaged = tmp_path / "damaged"
    shutil.copytree(trained / "checkpoints" / "step_00000012", damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    paths = dict(empty=tmp_path / "empty.txt", nowhere=tmp_path / "nowhere", pdf=tmp_path / "x.pdf")
    paths.update(damaged=damaged, trained=trained, out=tmp_path / "out")
    argv, message = BAD_COMMANDS[case]
    assert main([a.format(**paths) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_without_one(corpus, tmp_path, capsys):
    assert main(["train", "--data", str(corpus), "--out", str(tmp_path / "r"), *TINY, "--device", "cuda"]) == 2
    assert "torch sees no GPU: use --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_folder_of_code_prepared_in_parts_trains_as_one_stream(corpus, tmp_path, capsys):
    """The many-machine data path from the command line: one tokenizer, two parts of a folder of
    source files (chosen by --glob, in shards), trained on together."""
    code = tmp_path / "code"
    from growlength.readers import documents, list_sources

    texts = [t for _, t in documents(list_sources(["shakespeare"]))][:8]  # any text will do
    for i, text in enumerate(texts):
        (code / f"m{i % 3}").mkdir(parents=True, exist_ok=True)
        (code / f"m{i % 3}" / f"play{i}.c").write_text(text)
    (code / "m0" / "skip.o").write_bytes(b"\0\1")
    tok = tmp_path / "tok"
    common = ["--input", str(code), "--glob", "*.c", "--shard-tokens", "40000", "--workers", "1"]
    assert main(["prepare", *common, "--out", str(tok), "--tokenizer-only", "--vocab-size", "512"]) == 0
    for i in range(2):
        argv = ["prepare", *common, "--out", str(tmp_path / f"p{i}"), "--part", f"{i}/2"]
        assert main([*argv, "--tokenizer", str(tok / "tokenizer.json"), "--val-fraction", "0.2"]) == 0
    out = capsys.readouterr().out
    assert out.count("shards, vocab 512") == 2
    data = f"{tmp_path / 'p0'},{tmp_path / 'p1'}"
    assert main(["train", "--data", data, "--out", str(tmp_path / "run"), *TINY, "--budget-steps", "2"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and "val_loss" in records[-1]
