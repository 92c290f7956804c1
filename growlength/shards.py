"""The token shards `prepare` writes: one split's shards, as tokens arrive, resumable after a crash."""

import hashlib
from pathlib import Path

import numpy as np

from growlength.errors import GrowLengthError
from growlength.files import writing


class ShardWriter:
    """One split's shards, written as tokens arrive: `{split}-00000.bin`, ... of `shard_tokens` each.

    Tokens are appended to an open file (`.{split}-open-K.bin`, K the next shard's index); whenever it
    holds a full shard, `commit()` cuts it into shard files and a new open file with the rest, and
    returns the state that says which shards exist and how many tokens the open file holds. A writer
    built from that state later deletes whatever was written after it (shards not listed, other open
    files) and cuts the open file back to its length, so a crash at any point resumes exactly:

        add 5, commit -> open 5      add 7, commit -> shard 0 = 10 tokens, open 2   (shard_tokens 10)
        crash before the state of the second commit is saved: shard 0 and open-1 deleted, open-0 cut to 5
    """

    def __init__(self, folder: Path, split: str, dtype: str, shard_tokens: int, state: dict | None = None):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, np.dtype(dtype), shard_tokens
        state = state or {"shards": [], "open_tokens": 0}
        self.shards, self.open_tokens, self._stale = list(state["shards"]), int(state["open_tokens"]), []
        listed = {s["file"] for s in self.shards}
        for path in folder.glob(f"{split}-*.bin"):
            if path.name not in listed:
                path.unlink()
        for path in folder.glob(f".{split}-open-*.bin"):
            if path != self._open_path():
                path.unlink()
        for path in folder.glob(f".{split}-*.bin.tmp"):  # a shard whose write was cut short
            path.unlink()
        for shard in self.shards:
            path = folder / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["tokens"] * self.dtype.itemsize:
                raise GrowLengthError(f"{path} is missing or changed since it was written: delete {folder}")
        open_path = self._open_path()
        if self.open_tokens and (not open_path.is_file() or open_path.stat().st_size < self.open_bytes):
            raise GrowLengthError(f"{open_path} is shorter than its saved state: delete {folder}")
        with self._open_path().open("ab") as f:
            f.truncate(self.open_bytes)
        self._file = self._open_path().open("ab")

    def _open_path(self) -> Path:
        return self.folder / f".{self.split}-open-{len(self.shards):05d}.bin"

    @property
    def open_bytes(self) -> int:
        return self.open_tokens * self.dtype.itemsize

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards) + self.open_tokens

    def add(self, ids: np.ndarray) -> None:
        with writing("token shards", self.folder):
            ids.astype(self.dtype, copy=False).tofile(self._file)
        self.open_tokens += len(ids)

    def commit(self) -> dict:
        """Flush, cut full shards, and return the state to save (then call `cleanup`)."""
        with writing("token shards", self.folder):
            return self._commit()

    def _commit(self) -> dict:
        self._file.flush()
        if self.open_tokens >= self.shard_tokens:
            self._file.close()
            old = self._open_path()
            ids = self.open_ids()
            n_full = len(ids) // self.shard_tokens
            for i in range(n_full):
                self.write_shard(ids[i * self.shard_tokens : (i + 1) * self.shard_tokens])
            rest = ids[n_full * self.shard_tokens :]
            rest.tofile(self._open_path())
            self.open_tokens, self._file = len(rest), self._open_path().open("ab")
            self._stale.append(old)
        return {"shards": list(self.shards), "open_tokens": self.open_tokens}

    def open_ids(self) -> np.ndarray:
        if not self._file.closed:
            self._file.flush()
        return np.fromfile(self._open_path(), dtype=self.dtype, count=self.open_tokens)

    def write_shard(self, ids: np.ndarray) -> None:
        """The next shard file, written under a temporary name and renamed (a write cut short leaves only
        the temporary file, which the next writer of the folder deletes)."""
        ids = ids.astype(self.dtype, copy=False)
        name = f"{self.split}-{len(self.shards):05d}.bin"
        tmp = self.folder / f".{name}.tmp"
        with writing("token shards", self.folder):
            ids.tofile(tmp)
            tmp.replace(self.folder / name)
        digest = hashlib.sha256(ids.tobytes()).hexdigest()
        self.shards.append({"file": name, "tokens": len(ids), "sha256": digest, "max_id": int(ids.max())})

    def cleanup(self) -> None:
        """Delete the open files replaced by a commit, once the caller has saved its state."""
        for path in self._stale:
            path.unlink(missing_ok=True)
        self._stale = []

    def close(self, remove_open: bool = False) -> None:
        self._file.close()
        if remove_open:
            for path in self.folder.glob(f".{self.split}-open-*.bin"):
                path.unlink()
