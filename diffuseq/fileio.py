"""Atomic file writes (no torch import: the evaluation script uses them too).

A file is written to a temporary file in the same folder, fsynced and renamed, so a crash never
leaves a half-written file under a real name; it gets the mode the user's umask gives.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable

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


def atomic_write_text(text: str, path: Path) -> None:
    """Write a text file atomically (temporary file in the same folder, fsync, rename)."""
    atomic_write(path, "w", lambda handle: handle.write(text))
