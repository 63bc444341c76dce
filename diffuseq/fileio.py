"""Atomic file writes and jsonl reading (no torch import: the evaluation script uses them too).

A file is written to a temporary file in the same folder, fsynced and renamed, so a crash never
leaves a half-written file under a real name; it gets the mode the user's umask gives.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from .errors import UserError


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, mode: str, write: Callable[[IO], object]) -> None:
    """Write through ``write`` to a temporary file beside ``path``, fsync, rename; on failure the old file stays."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's own mode is 0600
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(err, OSError):
            raise UserError(f"cannot write {path}: {err.strerror or err}; earlier files are intact") from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def sha256_file(path: str | Path, offset: int = 0) -> str:
    """SHA-256 of a file's bytes from ``offset``, read in 8 MB chunks (never mapped: no resident pages)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(offset)
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(text: str, path: Path) -> None:
    """Write a text file atomically (temporary file in the same folder, fsync, rename)."""
    atomic_write(path, "w", lambda handle: handle.write(text))


_BLANK = object()


def parse_jsonl_line(path: str | Path, lineno: int, raw: bytes) -> Any:
    """The object on one line of a jsonl file (see :func:`is_blank` for a blank line); a line that is not UTF-8 or not
    JSON is a ``UserError`` naming the file and the line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}:{lineno}: not UTF-8 text (byte {raw[err.start]:#04x} at column "
                        f"{err.start + 1})") from None
    if not line.strip():
        return _BLANK
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None


def is_blank(parsed: Any) -> bool:
    """Whether :func:`parse_jsonl_line` found a blank line."""
    return parsed is _BLANK


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) of each non-blank line (see :func:`parse_jsonl_line`)."""
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            record = parse_jsonl_line(path, lineno, raw)
            if not is_blank(record):
                yield lineno, record
