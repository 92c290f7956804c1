"""Files, as every writer of growlength treats them: one checksum, fsync before a rename, one writer per
folder, and one line when a write fails."""

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import time
from pathlib import Path

from growlength.errors import GrowLengthError


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 16 MiB pieces."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') writes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


LOCK = ".lock"


@contextlib.contextmanager
def sole_writer(folder: Path, command: str, *, wait: bool = False):
    """Hold an exclusive OS lock on folder/.lock for as long as the `with` lasts: a second process on the
    same folder (a job started twice, a requeued copy while the first still runs, a --resume against a
    live run) stops at once with one line naming the folder and the host and PID that hold it (`wait`:
    it waits its turn instead, as for the shared corpus cache). The kernel releases the lock when the
    process ends, even by SIGKILL, so a crash never leaves a stale lock. The folder is created if
    missing; if it was, and the body fails leaving nothing in it but the lock, it is removed again."""
    folder = Path(folder)
    created = not folder.exists()
    fd = _lock(folder, wait)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`{command}` on {socket.gethostname()}, PID {os.getpid()}\n".encode(), 0)
        try:
            yield folder
        except BaseException:
            if created and not wait and [p.name for p in folder.iterdir()] == [LOCK]:
                shutil.rmtree(folder, ignore_errors=True)
            raise
    finally:
        os.close(fd)  # and with it the lock


def _holder(fd: int) -> str:
    """Who holds the lock, as the holder wrote it just after taking it (given a second to do so)."""
    for _ in range(20):
        holder = os.pread(fd, 400, 0).decode(errors="replace").strip()
        if holder:
            return holder
        time.sleep(0.05)
    return "another process"


def _lock(folder: Path, wait: bool) -> int:
    """A descriptor of folder/.lock holding its exclusive lock. If the file was removed while this process
    waited (its last holder failed before writing anything and removed the folder it had made), the lock
    is on a file no one else can see: take the one there now instead."""
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise GrowLengthError(f"cannot write to {folder}: {e.strerror}; choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise GrowLengthError(
                f"{folder} is in use by {holder}: wait for it to end, or give another folder"
            ) from None
        try:
            if os.fstat(fd).st_ino == os.stat(folder / LOCK).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


class WriteFailed(GrowLengthError):
    """A write that failed (a full disk, a quota, a vanished mount): what, where, why. The command that
    meets it adds what to do next (train: the last good checkpoint and --resume)."""

    def __init__(self, what: str, where: Path, error: BaseException):
        reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[-1]
        super().__init__(f"could not write {what} to {where}: {reason}")


@contextlib.contextmanager
def writing(what: str, where: Path):
    """Turn a failed write inside the `with` (OSError, or safetensors' own error) into WriteFailed."""
    from safetensors import SafetensorError

    try:
        yield
    except WriteFailed:
        raise
    except (OSError, SafetensorError) as e:
        raise WriteFailed(what, where, e) from None


def write_atomically(path: Path, text: str) -> None:
    """Write text beside `path` and rename it into place: a write cut short (a full disk) leaves the old
    file whole and no partial one; a failure raises WriteFailed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with writing(path.name, path.parent):
            tmp.write_text(text)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
