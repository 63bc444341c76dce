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

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..fileio import atomic_write, atomic_write_text  # noqa: F401 (atomic_write_text: part of this module's API)
from ..fileio import sha256_file

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
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.pt") if _STEP_RE.match(p.name)
                       and p.name.startswith(("ema_", "model")))
        hint = f", e.g. {path / found[0]}" if found else ""
        raise UserError(f"{path} is a folder: give a checkpoint file in it{hint}")
    match = _STEP_RE.match(path.name)
    if not match:
        raise UserError(f"{path}: expected a checkpoint named modelNNNNNN.pt or ema_<rate>_NNNNNN.pt")
    return int(match.group(1))


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` atomically (temporary file in the same folder, fsync, rename)."""
    atomic_write(path, "wb", lambda handle: torch.save(obj, handle))


def _first_words(text: str, limit: int = 160) -> str:
    """The first line of ``text``, shortened at a word boundary."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0] + " ..."


def safe_load(path: str | Path) -> Any:
    """Load a checkpoint file with ``weights_only=True``; refuse anything that needs arbitrary unpickling."""
    path = Path(path)
    if path.is_dir():
        parse_step(path)  # names a checkpoint in the folder
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head.startswith(b"PK") and not head.startswith(b"\x80"):
        raise UserError(f"cannot read checkpoint {path}: it is not a PyTorch checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(f"refusing to load {path}: it is not a plain state dict and would need arbitrary "
                        f"unpickling ({_first_words(str(err)) or 'unsupported content'})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot read checkpoint {path}: {_first_words(str(err)) or type(err).__name__}") from None


def file_identity(path: str | Path) -> dict[str, Any]:
    """Which file this is: absolute path, size, modification time and SHA-256 of the content."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_file(path)}


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


def newest_step(folder: Path) -> int | None:
    """The largest step K of any checkpoint file in ``folder`` (complete or not), or None."""
    steps = [int(m.group(1)) for p in Path(folder).glob("*.pt") if (m := _STEP_RE.match(p.name))]
    return max(steps, default=None)


def latest_checkpoint(folder: Path) -> Path | None:
    """``modelK.pt`` of the newest complete checkpoint in ``folder``, or None."""
    steps = complete_steps(folder)
    return Path(folder) / model_name(steps[0]) if steps else None


# -- loading weights into a model ----------------------------------------------------------------


def load_model_weights(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load a DiffuSeq-layout state dict, with one clear message on any key or shape mismatch."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{source} is not a model state dict")
    own = model.state_dict()
    missing = [k for k in own if k not in state and k != "position_ids"]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        hint = ""
        if any(k.startswith("self_cond_proj") for k in missing + unexpected):
            hint = " (a self-conditioned checkpoint needs `self_cond`, and a model without it cannot have it)"
        elif "mean_embed" in missing + unexpected:
            hint = (" (a DiffuSeq-v2 checkpoint with `mean_embed` needs `learned_mean_embed`, and a model without it "
                    "cannot have it)")
        raise UserError(f"{source} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}{hint}")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if wrong:
        hint = ""
        if wrong[0].startswith("word_embedding"):
            hint = " (vocabulary size or `hidden_dim` differ)"
        raise UserError(f"{source} does not fit this model{hint}: {wrong[0]}")
    model.load_state_dict(state, strict=False)
