"""Crash-safe writes and cautious reads of files other processes may have touched."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write, fsync, then rename: readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def complete_length(data: bytes) -> int:
    """How many leading bytes of a JSON-lines file are whole lines. A line is written with its
    newline; a last line without one was cut short by a crash, even if it parses."""
    return data.rfind(b"\n") + 1


def cut_torn_tail(path: Path) -> bool:
    """Cut a torn last line off `path` (fsynced), so the next append starts on a clean line;
    whether there was one."""
    if not path.exists():
        return False
    data = path.read_bytes()
    end = complete_length(data)
    if end == len(data):
        return False
    with open(path, "r+b") as f:
        f.truncate(end)
        os.fsync(f.fileno())
    return True


def append_line(path: Path, line: bytes) -> None:
    """Append one line (its newline included) and fsync it; a failed write is cut off again,
    so the file stays a sequence of whole lines."""
    data = memoryview(line)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in blocks (model weights do not fit in memory)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_capped(path: Path, cap: int) -> bytes | None:
    """The bytes of `path` if it is a regular file (not a symlink, FIFO or device) of at most
    `cap` bytes; None otherwise. For files an untrusted candidate wrote."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > cap:
            return None
        chunks, size = [], 0
        while chunk := os.read(fd, min(1 << 20, cap + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:  # it grew after the check
                return None
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)
