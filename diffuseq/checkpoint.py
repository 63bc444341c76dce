"""Checkpoint files: DiffuSeq's layout, atomic writes and safe loading.

A checkpoint of step K in a folder is
* ``modelK.pt`` — the model's state dict (K as 6 digits),
* ``ema_<rate>_K.pt`` — the EMA weights for each rate (what upstream DiffuSeq ships),
* ``optK.pt`` — the optimizer state,
* ``trainstateK.pt`` — everything else needed for an exact resume (step, data
  position, sampler history, every RNG per rank) and the sizes of the files
  above. It is written last, so its presence marks a complete checkpoint.

Every file is written to a temporary file in the same folder, fsynced and
renamed, so a crash never leaves a half-written checkpoint under a real name.
Files are read with ``torch.load(weights_only=True)``: a file that needs
arbitrary unpickling is refused.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch

from .errors import UserError

_STEP_RE = re.compile(r"^(?:model|opt|trainstate|ema_[0-9.]+_)(\d{6,})\.pt$")


def model_name(step: int) -> str:
    return f"model{step:06d}.pt"


def ema_name(rate: str, step: int) -> str:
    return f"ema_{rate}_{step:06d}.pt"


def opt_name(step: int) -> str:
    return f"opt{step:06d}.pt"


def trainstate_name(step: int) -> str:
    return f"trainstate{step:06d}.pt"


def parse_step(path: str | Path) -> int:
    """The step K of ``modelK.pt`` / ``ema_<rate>_K.pt`` / ``optK.pt``."""
    match = _STEP_RE.match(Path(path).name)
    if not match:
        raise UserError(f"{path}: expected a checkpoint named modelNNNNNN.pt or ema_<rate>_NNNNNN.pt")
    return int(match.group(1))


def _atomic_write(path: Path, mode: str, write: Callable[[IO], object]) -> None:
    """Write through ``write`` to a temporary file beside ``path``, fsync, rename; on failure the old file stays."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` atomically (temporary file in the same folder, fsync, rename)."""
    _atomic_write(path, "wb", lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: Path) -> None:
    """Write a text file atomically (temporary file in the same folder, fsync, rename)."""
    _atomic_write(path, "w", lambda handle: handle.write(text))


def safe_load(path: str | Path) -> Any:
    """Load a checkpoint file with ``weights_only=True``; refuse anything that needs arbitrary unpickling."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unsupported content"
        raise UserError(f"refusing to load {path}: it is not a plain state dict and would need arbitrary "
                        f"unpickling ({first[:120]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot read checkpoint {path}: {first[:200]}") from None


def complete_steps(folder: Path) -> list[int]:
    """Steps with a complete checkpoint in ``folder``, newest first.

    Complete: the trainstate marker loads and every file it lists has the recorded size.
    """
    folder = Path(folder)
    steps = []
    for state_file in folder.glob("trainstate*.pt"):
        match = _STEP_RE.match(state_file.name)
        if not match:
            continue
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
            files = state["files"]
        except Exception:  # noqa: BLE001 - any unreadable marker means "not complete"
            continue
        if all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items()):
            steps.append(int(match.group(1)))
    return sorted(steps, reverse=True)


def latest_checkpoint(folder: Path) -> Path | None:
    """``modelK.pt`` of the newest complete checkpoint in ``folder``, or None."""
    steps = complete_steps(folder)
    return Path(folder) / model_name(steps[0]) if steps else None
