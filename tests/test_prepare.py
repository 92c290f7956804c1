import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from growlength.errors import GrowLengthError
from growlength.prepare import EOS_TOKEN, prepare, read_documents, split_documents
from growlength.tokens import file_sha256, open_tokens

POEM = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n"


def make_inputs(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    for i in range(12):
        (folder / ("sub" if i % 2 else "") / f"doc{i}.txt").write_text(f"Document {i}.\n" + POEM * (i + 1))
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"Record {i}: " + POEM, "id": i}) for i in range(8)) + "\n")
    return folder, jsonl


def test_prepare_writes_tokens_meta_and_tokenizer(tmp_path):
    folder, jsonl = make_inputs(tmp_path)
    meta = prepare([str(folder), str(jsonl)], tmp_path / "out", vocab_size=300, val_fraction=0.2)
    data = open_tokens(tmp_path / "out")
    assert meta["train_docs"] + meta["val_docs"] == 20 and meta["val_docs"] >= 1
    assert meta["vocab_size"] == 300 and meta["dtype"] == "uint16"
    assert meta["tokenizer_sha256"] == file_sha256(tmp_path / "out" / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    eos = tokenizer.token_to_id(EOS_TOKEN)
    assert meta["eos_id"] == eos
    # documents are separated by eos and decode back to the original text
    for stream, n_docs in ((data.train, meta["train_docs"]), (data.val, meta["val_docs"])):
        assert int((np.asarray(stream) == eos).sum()) == n_docs
        assert stream[-1] == eos
    train_text = tokenizer.decode(np.asarray(data.train).tolist(), skip_special_tokens=False)
    val_text = tokenizer.decode(np.asarray(data.val).tolist(), skip_special_tokens=False)
    train_docs = set(train_text.split(EOS_TOKEN)[:-1])
    val_docs = set(val_text.split(EOS_TOKEN)[:-1])
    originals = {p.read_text() for p in folder.rglob("*.txt")} | {f"Record {i}: " + POEM for i in range(8)}
    assert train_docs | val_docs == originals
    assert not train_docs & val_docs  # no held-out document is trained on
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_given_tokenizer_is_used_as_is(tmp_path):
    folder, _ = make_inputs(tmp_path)
    prepare([str(folder)], tmp_path / "a", vocab_size=280)
    meta = prepare([str(folder)], tmp_path / "b", tokenizer_path=str(tmp_path / "a" / "tokenizer.json"))
    assert meta["tokenizer_sha256"] == file_sha256(tmp_path / "a" / "tokenizer.json")
    assert np.array_equal(open_tokens(tmp_path / "a").train, open_tokens(tmp_path / "b").train)


def test_csv_through_datasets(tmp_path):
    csv = tmp_path / "lines.csv"
    csv.write_text("title,body\n" + "".join(f't{i},"{POEM.strip()} number {i}"\n' for i in range(30)))
    docs = read_documents([str(csv)], text_field="body")
    assert len(docs) == 30 and docs[3].endswith("number 3")
    with pytest.raises(GrowLengthError, match="no column 'text'"):
        read_documents([str(csv)])


def test_the_embedded_corpus_is_real_text_of_several_megabytes():
    docs = read_documents(["shakespeare"])
    assert len(docs) >= 30
    assert sum(map(len, docs)) > 4_000_000
    assert any("To be, or not to be" in d for d in docs)


def test_single_document_is_split_at_a_line():
    text = "".join(f"line {i}\n" for i in range(1000))
    train, val = split_documents([text], 0.1, seed=0)
    assert train[0] + val[0] == text
    assert val[0].startswith("\n") and 0.08 < len(val[0]) / len(text) < 0.12


def test_split_is_seeded_and_whole_documents():
    docs = [f"doc {i} " * (i + 5) for i in range(40)]
    a = split_documents(docs, 0.1, seed=1)
    assert a == split_documents(docs, 0.1, seed=1)
    assert sorted(a[0] + a[1]) == sorted(docs)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"body": "x"}\n', "no string field 'text'"),
        ("not json\n", "not valid JSON"),
    ],
)
def test_bad_jsonl(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(GrowLengthError, match=message):
        read_documents([str(path)])


def test_bad_inputs(tmp_path):
    with pytest.raises(GrowLengthError, match="does not exist"):
        read_documents([str(tmp_path / "missing.txt")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(GrowLengthError, match="holds no"):
        read_documents([str(tmp_path / "empty")])
    (tmp_path / "blank.txt").write_text("  \n")
    with pytest.raises(GrowLengthError, match="no text"):
        read_documents([str(tmp_path / "blank.txt")])
    (tmp_path / "tok.json").write_text("{}")
    with pytest.raises(GrowLengthError, match="cannot read tokenizer"):
        prepare([str(tmp_path / "missing.txt")], tmp_path / "o", tokenizer_path=str(tmp_path / "tok.json"))
    assert not (tmp_path / "o").exists()
