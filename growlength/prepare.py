"""Text -> token shards: a streaming reader, a pool of encoding workers, a resumable shard writer.

    inputs --readers.documents--> (record id, text) --encode.batches of ~1M chars--> workers encode in
           order --> ShardWriter("train") / ShardWriter("val") --commit + .prepare-state.json per
           batch--> meta.json last

How documents become ids (the val choice, the tokenizer sample, the pool) is in encode.py. Here: the
prepared folder. After each batch the writers commit and the state (the next record's id, shards, open-file
lengths) is saved atomically; a rerun of the same command resumes from it, a different command is
refused with the reason. meta.json is written last: a folder without it is never taken for a prepared
one.
"""

import hashlib
import json
import os
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from growlength.encode import EOS_TOKEN, PrepareOptions, batches, encoded, load_tokenizer, new_tokenizer
from growlength.errors import GrowLengthError
from growlength.files import WriteFailed, file_sha256, sole_writer, write_atomically, writing
from growlength.meter import Meter
from growlength.readers import DEFAULT_CORPUS, Source, default_corpus_dir, list_sources
from growlength.shards import ShardWriter

__all__ = ["EOS_TOKEN", "PrepareOptions", "prepare", "default_corpus_dir", "resolve_data"]

FORMAT_VERSION = 2
STATE = ".prepare-state.json"


def parse_part(part: str) -> tuple[int, int]:
    """'I/N' -> (I, N): this machine reads the sources whose index is I modulo N."""
    match = re.fullmatch(r"(\d+)/(\d+)", part.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise GrowLengthError(f"--part must be I/N with 0 <= I < N (e.g. 0/4), got {part!r}")
    return int(match[1]), int(match[2])


def part_sources(sources: list[Source], part: str) -> list[Source | None]:
    """The sources of this part, each at its index in the whole list (None where another part reads)."""
    index, count = parse_part(part)
    if count > len(sources):
        raise GrowLengthError(f"--part {part}: the inputs hold {len(sources)} files, fewer than {count} parts")
    return [s if i % count == index else None for i, s in enumerate(sources)]


# --- the prepared folder --------------------------------------------------------------------------


def prepare(
    inputs: list[str],
    out: str | Path,
    *,
    tokenizer_path: str | None = None,
    workers: int | None = None,
    tokenizer_only: bool = False,
    wait_for_folder: bool = False,
    **options,
) -> dict:
    """Prepare `out` from `inputs` (or resume a prepare of the same command); returns meta.json's content.

    `options` are the fields of PrepareOptions. With tokenizer_only, only out/tokenizer.json is written
    (to give every --part the same tokenizer). The folder is held for the whole prepare (one writer):
    another prepare of it stops at once, or with wait_for_folder waits its turn (then finds it done)."""
    out = Path(out)
    if tokenizer_path:
        options["tokenizer_sha256"] = file_sha256(_existing(tokenizer_path))
    opts = PrepareOptions(**options)
    all_sources = list_sources(inputs, opts.glob)
    sources = part_sources(all_sources, opts.part)
    if opts.part != "0/1" and not (tokenizer_path or tokenizer_only):
        raise GrowLengthError(
            "--part needs one tokenizer for every part: make it once with `growlength prepare --tokenizer-only "
            "--out TOK ...` over all the inputs and give every part --tokenizer TOK/tokenizer.json"
        )
    tokenizer = load_tokenizer(tokenizer_path, opts.eos_token) if tokenizer_path else None
    _check_writable(out)
    with sole_writer(out, "growlength prepare", wait=wait_for_folder):
        try:
            if tokenizer_only:
                return _tokenizer_only(all_sources, out, opts, tokenizer)
            return _prepare_into(out, inputs, sources, opts, tokenizer, workers)
        except WriteFailed as e:
            raise GrowLengthError(
                f"{e}; free some space, then run the same command again: it resumes from its last saved state"
            ) from None


def _prepare_into(out: Path, inputs: list[str], sources: list, opts: PrepareOptions, tokenizer, workers) -> dict:
    """prepare's work, with the folder held: reuse a finished folder, or resume or start the encoding."""
    fingerprint = {"inputs": [str(i) for i in inputs], "options": asdict(opts)}
    fingerprint["sources"] = [s.fingerprint() if s else None for s in sources]
    done = _reuse(out, fingerprint)
    if done is not None:
        return done
    state = _load_state(out, fingerprint)
    if state is None:
        tokenizer = _write_tokenizer(tokenizer, sources, out, opts)
        _save_json(out / "inputs.json", fingerprint)
        state = {**_fresh_state(tokenizer, opts), "inputs_sha256": _sha256(fingerprint)}
    else:
        tokenizer = load_tokenizer(out / "tokenizer.json", opts.eos_token)
    writers = {
        split: ShardWriter(out, split, state["dtype"], opts.shard_tokens, state["splits"][split])
        for split in ("train", "val")
    }
    try:
        _encode_all(sources, out, opts, tokenizer, state, workers or os.cpu_count() or 1, writers)
        return _finish(out, opts, state, writers, fingerprint)
    except BaseException:
        for writer in writers.values():  # the open files stay on disk for the resume
            writer.close()
        raise


def _existing(path: str) -> str:
    if not Path(path).is_file():
        raise GrowLengthError(f"tokenizer {path} does not exist")
    return path


def _tokenizer_only(sources: list, out: Path, opts: PrepareOptions, tokenizer) -> dict:
    _write_tokenizer(tokenizer, sources, out, opts)
    return {"tokenizer": str(out / "tokenizer.json"), "tokenizer_sha256": file_sha256(out / "tokenizer.json")}


def _fresh_state(tokenizer, opts: PrepareOptions) -> dict:
    eos_id = tokenizer.token_to_id(opts.eos_token)
    if eos_id is None:
        raise GrowLengthError(
            f"the tokenizer has no token {opts.eos_token!r}: give the separator with --eos-token"
        )
    return {
        "next_record": [0, 0],
        "dtype": "uint16" if tokenizer.get_vocab_size() <= 2**16 else "uint32",
        "eos_id": eos_id,
        "docs": {"train": 0, "val": 0},
        "chars": 0,
        "splits": {"train": None, "val": None},
        "seconds": 0.0,
    }


def _encode_all(sources, out: Path, opts: PrepareOptions, tokenizer, state: dict, workers: int, writers) -> None:
    """Encode from the saved next record to the end, committing the writers and the state after each batch."""
    # The bar's total: the bytes of plain text inputs (about their characters); unknown for the rest.
    plain = [s for s in sources if s and s.kind in ("text", "jsonl") and s.path.suffix not in (".gz", ".zst")]
    total = sum(s.path.stat().st_size for s in plain) if len(plain) == sum(1 for s in sources if s) else 0
    bar = Meter(total or None, initial=state["chars"], desc="encode", unit="char", scale=True)
    started = time.perf_counter() - state["seconds"]
    stream = batches(sources, opts, tuple(state["next_record"]))
    for batch, ids, lengths in encoded(stream, tokenizer, state["eos_id"], workers):
        ends = np.cumsum(lengths)
        for end, n, val in zip(ends, lengths, batch.val, strict=True):
            writers["val" if val else "train"].add(ids[end - n : end])
        state["docs"]["val"] += sum(batch.val)
        state["docs"]["train"] += len(batch.val) - sum(batch.val)
        state["chars"] += batch.chars
        state["next_record"] = list(batch.end)
        state["seconds"] = time.perf_counter() - started
        state["splits"] = {split: writer.commit() for split, writer in writers.items()}
        _save_json(out / STATE, state)
        for writer in writers.values():
            writer.cleanup()
        bar.update(batch.chars)
    bar.close()


def _finish(out: Path, opts: PrepareOptions, state: dict, writers: dict, fingerprint: dict) -> dict:
    """The open tokens of each split become its last shard; then meta.json, and the state goes.

    A corpus whose documents all fall on one side (a single document, say) cannot hold out whole
    documents: the last val_fraction of its tokens become the val split instead."""
    rest = {split: writer.open_ids() for split, writer in writers.items()}
    train, val = writers["train"], writers["val"]
    if not train.shards and not len(rest["train"]) and not val.shards:
        rest = {"train": rest["val"], "val": rest["val"][:0]}
    if not val.shards and not len(rest["val"]):
        total = sum(s["tokens"] for s in train.shards) + len(rest["train"])
        cut = len(rest["train"]) - min(len(rest["train"]) // 2, round(opts.val_fraction * total) or 1)
        rest = {"train": rest["train"][:cut], "val": rest["train"][cut:]}
    for split, writer in writers.items():
        if len(rest[split]):
            writer.write_shard(rest[split])
        if not writer.shards:
            raise GrowLengthError(f"no {split} tokens: give more text (or check --val-fraction)")
    shards = {split: writer.shards for split, writer in writers.items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "dtype": state["dtype"],
        "vocab_size": load_tokenizer(out / "tokenizer.json", opts.eos_token).get_vocab_size(),
        "eos_id": state["eos_id"],
        "eos_token": opts.eos_token,
        "train_tokens": sum(s["tokens"] for s in shards["train"]),
        "val_tokens": sum(s["tokens"] for s in shards["val"]),
        "train_docs": state["docs"]["train"],
        "val_docs": state["docs"]["val"],
        "text_chars": state["chars"],
        "tokenizer_sha256": file_sha256(out / "tokenizer.json"),
        "inputs_sha256": _sha256(fingerprint),
        "encode_seconds": round(state["seconds"], 1),
        "shards": shards,
        "options": asdict(opts),
    }
    _save_json(out / "meta.json", meta)
    for writer in writers.values():
        writer.close(remove_open=True)
    (out / STATE).unlink(missing_ok=True)
    return meta


def _reuse(out: Path, fingerprint: dict) -> dict | None:
    """meta.json of a finished prepare of the same command, or None; a different one is refused."""
    meta_path = out / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("inputs_sha256") == _sha256(fingerprint):
        return meta
    before = _read_json(out / "inputs.json")
    raise GrowLengthError(
        f"{out} is already prepared from {_difference(before, fingerprint)}: delete it or choose another --out"
    )


def _load_state(out: Path, fingerprint: dict) -> dict | None:
    """The saved state of an unfinished prepare of the same command, or None; a different one is refused."""
    state = _read_json(out / STATE)
    if state is None:
        return None
    if state.get("inputs_sha256") != _sha256(fingerprint):
        raise GrowLengthError(
            f"{out} holds an unfinished prepare of {_difference(_read_json(out / 'inputs.json'), fingerprint)}: "
            "rerun that command to finish it, or delete the folder"
        )
    return state


def _difference(before: dict | None, now: dict) -> str:
    """What differs between the command that wrote a folder and this one, in words."""
    if not before:
        return "another command"
    for key in ("inputs", "options"):
        if before.get(key) != now[key]:
            if key == "options":
                changed = {k: (before[key].get(k), v) for k, v in now[key].items() if before[key].get(k) != v}
                return (
                    "other options ("
                    + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
                    + ")"
                )
            return f"other inputs ({before[key]})"
    for old, new in zip(before["sources"], now["sources"], strict=False):
        if old != new:
            return f"inputs that have changed since (first: {(new or old or [['?']])[0][0]})"
    return "inputs that have changed since (files added or removed)"


def _write_tokenizer(tokenizer, sources: list, out: Path, opts: PrepareOptions):
    """The given tokenizer, or one trained on the sample, saved as out/tokenizer.json. The folder is
    created only after the training: an input with no text leaves nothing behind."""
    _check_writable(out)
    tokenizer = tokenizer or new_tokenizer(sources, opts)
    make_out_dir(out)
    with writing("tokenizer.json", out):
        tokenizer.save(str(out / ".tokenizer.json.tmp"))
        os.replace(out / ".tokenizer.json.tmp", out / "tokenizer.json")
    return tokenizer


def _sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _save_json(path: Path, value) -> None:
    """Written whole under a temporary name, then renamed: never half a file under the real name."""
    write_atomically(path, json.dumps(value, indent=1) + "\n")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GrowLengthError(f"{path} is damaged: delete {path.parent} and prepare again") from None


def _check_writable(out: Path) -> None:
    """Before the long work: out, or the nearest folder above it that exists, can be written."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise GrowLengthError(f"cannot write to {out} ({existing} is not a writable folder); choose another --out")


def make_out_dir(out: Path) -> None:
    """Create out (and its parents) and prove it writable, or say which --out to change."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise GrowLengthError(f"cannot write to {out}: {e.strerror}; choose another --out") from None


def cache_dir() -> Path:
    return Path(os.environ.get("GROWLENGTH_CACHE", Path.home() / ".cache" / "growlength"))


def resolve_data(data: str, vocab_size: int) -> Path:
    """A prepared folder (or several, 'a,b') as given, or the embedded corpus (prepared on first use)
    for 'shakespeare'."""
    if data == DEFAULT_CORPUS and not Path(data).is_dir():
        return default_data(vocab_size)
    return Path(data)


def default_data(vocab_size: int) -> Path:
    """The embedded corpus prepared at vocab_size, once, in the cache (GROWLENGTH_CACHE)."""
    out = cache_dir() / f"{DEFAULT_CORPUS}-v{vocab_size}-f{FORMAT_VERSION}"
    if not (out / "meta.json").is_file():  # a run preparing it beside this one: wait, then find it done
        prepare([DEFAULT_CORPUS], out, vocab_size=vocab_size, workers=1, wait_for_folder=True)
    return out
