import csv
import gzip
import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from growlength import encode as enc
from growlength import prepare as prep
from growlength.encode import EOS_TOKEN, is_val, pieces, tokenizer_sample
from growlength.errors import GrowLengthError
from growlength.files import file_sha256
from growlength.prepare import prepare
from growlength.readers import documents, list_sources
from growlength.tokens import open_tokens

POEM = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n"


def make_inputs(tmp_path, n_files=12):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    for i in range(n_files):
        (folder / ("sub" if i % 2 else "") / f"doc{i}.txt").write_text(f"Document {i}.\n" + POEM * (i + 1))
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"Record {i}: " + POEM, "id": i}) for i in range(8)) + "\n")
    return folder, jsonl


def decoded_docs(folder, split):
    """The documents of a prepared split, decoded."""
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    stream = getattr(open_tokens(folder), split)
    return tokenizer.decode(np.asarray(stream).tolist(), skip_special_tokens=False).split(EOS_TOKEN)[:-1]


def shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*-*.bin"))}


def test_prepare_writes_shards_meta_and_tokenizer(tmp_path):
    folder, jsonl = make_inputs(tmp_path)
    out = tmp_path / "out"
    meta = prepare([str(folder), str(jsonl)], out, vocab_size=300, val_fraction=0.2, shard_tokens=400, workers=1)
    assert meta["train_docs"] + meta["val_docs"] == 20 and meta["val_docs"] >= 1
    assert meta["vocab_size"] == 300 and meta["dtype"] == "uint16" and meta["format_version"] == 2
    assert meta["tokenizer_sha256"] == file_sha256(out / "tokenizer.json")
    assert len(meta["shards"]["train"]) > 2  # the train split really is cut into shards of at most 400
    for split in ("train", "val"):
        for shard in meta["shards"][split]:
            assert file_sha256(out / shard["file"]) == shard["sha256"] and shard["tokens"] <= 400
        assert sum(s["tokens"] for s in meta["shards"][split]) == meta[f"{split}_tokens"]
    data = open_tokens(out)
    eos = Tokenizer.from_file(str(out / "tokenizer.json")).token_to_id(EOS_TOKEN)
    assert meta["eos_id"] == eos and data.train[-1] == eos and data.val[-1] == eos
    # documents come back whole, each in exactly one split, and in input order within a split
    train, val = decoded_docs(out, "train"), decoded_docs(out, "val")
    originals = [p.read_text() for p in sorted(folder.rglob("*.txt"))] + [f"Record {i}: " + POEM for i in range(8)]
    assert sorted(train + val) == sorted(originals) and not set(train) & set(val)
    assert train == [d for d in originals if d in train]
    assert sorted(p.name for p in out.iterdir()) == sorted(  # .lock: the one-writer lock (files.sole_writer)
        ["meta.json", "inputs.json", "tokenizer.json", ".lock"]
        + [s["file"] for v in meta["shards"].values() for s in v]
    )


def test_output_does_not_depend_on_the_number_of_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(enc, "BATCH_CHARS", 500)  # many batches in flight at once
    folder, jsonl = make_inputs(tmp_path)
    for workers in (1, 3):
        prepare(
            [str(folder), str(jsonl)], tmp_path / f"w{workers}", vocab_size=300, shard_tokens=700, workers=workers
        )
    assert shard_bytes(tmp_path / "w1") == shard_bytes(tmp_path / "w3")
    assert len(shard_bytes(tmp_path / "w1")) > 3


@pytest.mark.parametrize("crash_at", [1, 2, 5, 9])
def test_a_prepare_killed_anywhere_resumes_to_the_same_files(tmp_path, monkeypatch, crash_at):
    """Killed at the n-th state save (shards already cut, the state that lists them not yet saved),
    a rerun of the same command ends with the same files as one that never stopped."""
    monkeypatch.setattr(enc, "BATCH_CHARS", 400)
    folder, jsonl = make_inputs(tmp_path)
    args = dict(vocab_size=300, val_fraction=0.2, shard_tokens=500, workers=1)
    whole = prepare([str(folder), str(jsonl)], tmp_path / "whole", **args)
    saves, real_save = [], prep._save_json

    def dying_save(path, value):
        if path.name == prep.STATE:
            saves.append(1)
            if len(saves) == crash_at:
                raise KeyboardInterrupt
        real_save(path, value)

    monkeypatch.setattr(prep, "_save_json", dying_save)
    with pytest.raises(KeyboardInterrupt):
        prepare([str(folder), str(jsonl)], tmp_path / "cut", **args)
    assert not (tmp_path / "cut" / "meta.json").exists()  # nothing half-done looks prepared
    with pytest.raises(GrowLengthError, match="no meta.json"):
        open_tokens(tmp_path / "cut")
    monkeypatch.setattr(prep, "_save_json", real_save)
    (tmp_path / "cut" / ".train-00007.bin.tmp").write_bytes(b"half a shard")  # as a kill mid-write leaves
    resumed = prepare([str(folder), str(jsonl)], tmp_path / "cut", **args)
    assert shard_bytes(tmp_path / "cut") == shard_bytes(tmp_path / "whole")
    assert {k: v for k, v in resumed.items() if k != "encode_seconds"} == {
        k: v for k, v in whole.items() if k != "encode_seconds"
    }
    assert [p.name for p in (tmp_path / "cut").glob(".*")] == [".lock"]  # no temporary file; the lock is kept


def test_changed_inputs_or_options_are_refused_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(enc, "BATCH_CHARS", 400)
    folder, _ = make_inputs(tmp_path)
    meta = prepare([str(folder)], tmp_path / "out", vocab_size=300, workers=1)
    assert prepare([str(folder)], tmp_path / "out", vocab_size=300, workers=2) == meta  # done: reused
    with pytest.raises(GrowLengthError, match="vocab_size was 300, now 320"):
        prepare([str(folder)], tmp_path / "out", vocab_size=320)
    real_save, saves = prep._save_json, []

    def dying_save(path, value):  # killed at the second save of the state
        saves.append(path.name)
        if saves.count(prep.STATE) == 2:
            raise KeyboardInterrupt
        real_save(path, value)

    monkeypatch.setattr(prep, "_save_json", dying_save)
    with pytest.raises(KeyboardInterrupt):
        prepare([str(folder)], tmp_path / "cut", vocab_size=300, workers=1, shard_tokens=100)
    monkeypatch.undo()
    with pytest.raises(GrowLengthError, match=r"unfinished prepare of other options \(shard_tokens was 100"):
        prepare([str(folder)], tmp_path / "cut", vocab_size=300, workers=1)
    (folder / "doc0.txt").write_text("changed since")
    with pytest.raises(GrowLengthError, match=r"unfinished prepare of inputs that have changed.*doc0\.txt"):
        prepare([str(folder)], tmp_path / "cut", vocab_size=300, workers=1, shard_tokens=100)


def test_given_tokenizer_is_used_as_is(tmp_path):
    folder, _ = make_inputs(tmp_path)
    prepare([str(folder)], tmp_path / "a", vocab_size=280, workers=1)
    meta = prepare([str(folder)], tmp_path / "b", tokenizer_path=str(tmp_path / "a" / "tokenizer.json"), workers=1)
    assert meta["tokenizer_sha256"] == file_sha256(tmp_path / "a" / "tokenizer.json")
    assert np.array_equal(open_tokens(tmp_path / "a").train, open_tokens(tmp_path / "b").train)


def test_parts_on_many_machines_read_as_one_stream(tmp_path):
    """Two parts with one tokenizer hold exactly the documents of a one-machine prepare, the same ones
    held out, and train as one stream."""
    folder, jsonl = make_inputs(tmp_path)
    inputs = [str(folder), str(jsonl)]
    with pytest.raises(GrowLengthError, match="--tokenizer-only"):
        prepare(inputs, tmp_path / "p0", part="0/2")
    tok = prepare(inputs, tmp_path / "tok", tokenizer_only=True, vocab_size=300)["tokenizer"]
    whole = tmp_path / "whole"
    prepare(inputs, whole, tokenizer_path=tok, val_fraction=0.3, workers=1)
    for i in range(2):
        prepare(inputs, tmp_path / f"p{i}", tokenizer_path=tok, val_fraction=0.3, part=f"{i}/2", workers=1)
    joined = open_tokens(f"{tmp_path / 'p0'},{tmp_path / 'p1'}")
    assert len(joined.train) == len(open_tokens(whole).train)
    for split in ("train", "val"):
        parts = decoded_docs(tmp_path / "p0", split) + decoded_docs(tmp_path / "p1", split)
        assert sorted(parts) == sorted(decoded_docs(whole, split))
    prepare(inputs, tmp_path / "other", vocab_size=290, workers=1)
    with pytest.raises(GrowLengthError, match="same tokenizer"):
        open_tokens(f"{tmp_path / 'p0'},{tmp_path / 'other'}")


def test_every_input_format_streams_its_documents(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    rows = [f"row {i}: " + POEM for i in range(50)]
    lines = "\n".join(json.dumps({"text": r}) for r in rows) + "\n"
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    pq.write_table(pa.table({"text": rows}), tmp_path / "a.parquet", row_group_size=7)
    datasets.Dataset.from_dict({"text": rows}).save_to_disk(str(tmp_path / "saved"))
    with (tmp_path / "a.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["text"]] + [[r] for r in rows])
    for name in ("a.jsonl.gz", "a.jsonl.zst", "a.parquet", "saved", "a.csv"):
        sources = list_sources([str(tmp_path / name)])
        assert [t for _, t in documents(sources)] == rows, name
        # a resumed read starts at the record it is given
        assert [t for _, t in documents(sources, start=(0, 23))] == rows[23:], name
    code = tmp_path / "code"
    (code / "src").mkdir(parents=True)
    for name in ("a.c", "b.h", "src/c.py", "notes.txt", "d.o"):
        (code / name).write_text(f"// {name}\n")
    texts = [t for _, t in documents(list_sources([str(code)], glob="*.c,*.h,*.py"))]
    assert texts == ["// a.c\n", "// b.h\n", "// src/c.py\n"]


def test_bad_inputs_say_what_to_fix(tmp_path):
    with pytest.raises(GrowLengthError, match="does not exist"):
        list_sources([str(tmp_path / "missing.txt")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(GrowLengthError, match="holds no files matching"):
        list_sources([str(tmp_path / "empty")])
    for content, message in (('{"body": "x"}\n', "no string field 'text'"), ("not json\n", "not valid JSON")):
        (tmp_path / "bad.jsonl").write_text(content)
        with pytest.raises(GrowLengthError, match=message):
            list(documents(list_sources([str(tmp_path / "bad.jsonl")])))
    (tmp_path / "blank.txt").write_text("  \n")
    with pytest.raises(GrowLengthError, match="no text found"):
        prepare([str(tmp_path / "blank.txt")], tmp_path / "b", workers=1)
    (tmp_path / "tok.json").write_text("{}")
    with pytest.raises(GrowLengthError, match="cannot read tokenizer"):
        prepare([str(tmp_path / "blank.txt")], tmp_path / "o", tokenizer_path=str(tmp_path / "tok.json"))
    assert not (tmp_path / "o").exists()
    with pytest.raises(GrowLengthError, match="--part must be I/N"):
        prepare([str(tmp_path / "blank.txt")], tmp_path / "o", part="2/2")


def test_the_embedded_corpus_is_real_text_of_several_megabytes():
    texts = [t for _, t in documents(list_sources(["shakespeare"]))]
    assert len(texts) >= 30
    assert sum(map(len, texts)) > 4_000_000
    assert any("To be, or not to be" in t for t in texts)


def test_val_is_whole_documents_chosen_by_a_seeded_hash_of_their_position():
    positions = [(s, r) for s in range(20) for r in range(500)]
    chosen = [p for p in positions if is_val(7, p, 0.1)]
    assert chosen == [p for p in positions if is_val(7, p, 0.1)]  # the same in every run
    assert 0.09 < len(chosen) / len(positions) < 0.11
    assert chosen != [p for p in positions if is_val(8, p, 0.1)]


def test_a_single_document_gives_its_tail_to_val(tmp_path):
    text = "".join(f"line {i} of the only document\n" for i in range(400))
    (tmp_path / "one.txt").write_text(text)
    meta = prepare([str(tmp_path / "one.txt")], tmp_path / "out", vocab_size=300, val_fraction=0.1, workers=1)
    assert 0.09 < meta["val_tokens"] / (meta["train_tokens"] + meta["val_tokens"]) < 0.11
    data = open_tokens(tmp_path / "out")
    tokenizer = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    joined = np.concatenate([np.asarray(data.train), np.asarray(data.val)]).tolist()
    assert tokenizer.decode(joined, skip_special_tokens=False) == text + EOS_TOKEN


def test_the_tokenizer_sample_is_bounded_seeded_and_from_train_documents(tmp_path):
    folder, jsonl = make_inputs(tmp_path, n_files=40)
    sources = list_sources([str(folder), str(jsonl)])
    opts = enc.PrepareOptions(tokenizer_sample=2000, val_fraction=0.2, seed=3)
    sample = tokenizer_sample(sources, opts)
    assert 0 < sum(map(len, sample)) <= 2000 and sample == tokenizer_sample(sources, opts)
    val = {t for p, t in documents(sources) if is_val(3, p, 0.2)}
    assert not set(sample) & val
    other = tokenizer_sample(sources, enc.PrepareOptions(tokenizer_sample=2000, val_fraction=0.2, seed=4))
    assert other != sample


def test_long_documents_are_encoded_in_pieces_cut_at_line_ends():
    text = "".join(f"line {i}\n" for i in range(1000))
    cut = pieces(text, max_chars=100)
    assert "".join(cut) == text and all(len(p) <= 100 for p in cut)
    assert all(p.endswith("\n") for p in cut)
    assert pieces("x" * 250, max_chars=100) == ["x" * 100, "x" * 100, "x" * 50]


def test_the_prepare_benchmark_script_reports_wall_memory_and_the_tokenizer_limit(tmp_path):
    """scripts/prepare_bench.py as docs/data.md runs it, on a small folder of code."""
    import subprocess
    import sys
    from pathlib import Path

    code = tmp_path / "code"
    code.mkdir()
    for i in range(30):
        (code / f"f{i}.c").write_text(f"int f{i}(int x) {{ return x * {i}; }}\n" * 40)
    script = Path(__file__).parent.parent / "scripts" / "prepare_bench.py"
    argv = [sys.executable, str(script), "--input", str(code), "--glob", "*.c", "--out", str(tmp_path / "out")]
    argv += ["--limit-chars", "5000", "--json", str(tmp_path / "r.json"), "--", "--vocab-size", "300"]
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["run"]["rc"] == 0 and report["run"]["peak_rss_gb"] > 0
    assert report["meta"]["text_chars"] == sum(len(p.read_text()) for p in code.iterdir())
    assert report["tokenizer_limit"]["chars_per_s"] > 0
