"""Decode outputs that say what made them: meta files, locks, and the check that a folder is not mixed.

A decode writes, next to its per-seed files ``seed<S>_<name>.json``, one ``decode_<name>.meta.json``
holding the checkpoint's identity (path, size, mtime, SHA-256), every setting that changes the text,
and for each seed file its SHA-256. The meta is written before the first seed file and updated
after each, so an interrupted decode still describes the files it completed (``"complete": false``).

:func:`check_outputs` groups a selection of output files by the decode that made them, and
refuses files that changed after their decode, or (unless allowed) files of different decodes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError
from .fileio import atomic_write_text

META_SUFFIX = ".meta.json"


def meta_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"decode_{name}{META_SUFFIX}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_meta(path: Path) -> dict[str, Any] | None:
    """A meta file's content, or None when it is absent or unreadable."""
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


@contextlib.contextmanager
def decode_lock(out_dir: Path, name: str) -> Iterator[None]:
    """Hold ``out_dir/.decode_<name>.lock`` for the decode; a second decode of the same name is refused."""
    lock_file = Path(out_dir) / f".decode_{name}.lock"
    handle = lock_file.open("w")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another decode with the same settings is writing into {out_dir} now; wait for it "
                            f"or use another --out_dir") from None
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_file.unlink()
        handle.close()


def start_meta(out_dir: Path, name: str, info: dict[str, Any]) -> dict[str, Any]:
    """The meta of a new decode, keeping the seed files of an earlier decode of the same checkpoint and settings.

    An earlier meta of the same name that names another checkpoint or other settings is an error:
    the folder belongs to that decode.
    """
    path = meta_path(out_dir, name)
    old = read_meta(path)
    seeds: dict[str, Any] = {}
    if old is not None:
        if old.get("checkpoint", {}).get("sha256") != info["checkpoint"]["sha256"]:
            raise UserError(f"{path} describes decodes of another checkpoint ({old.get('checkpoint', {}).get('path')}); "
                            f"use another --out_dir")
        if old.get("settings") != info["settings"]:
            raise UserError(f"{path} describes a decode with other settings; use another --out_dir")
        for seed, entry in old.get("seeds", {}).items():
            file = Path(out_dir) / entry.get("file", "")
            if file.is_file() and sha256_of(file) == entry.get("sha256"):
                seeds[seed] = entry
    meta = {**info, "complete": False, "seeds": seeds}
    atomic_write_text(json.dumps(meta, indent=2) + "\n", path)
    return meta


def add_seed(out_dir: Path, name: str, meta: dict[str, Any], seed: int, text: str, seconds: float,
             examples: int) -> Path:
    """Write one seed's file atomically, then record it (with its SHA-256) in the meta."""
    out_file = Path(out_dir) / f"seed{seed}_{name}.json"
    atomic_write_text(text, out_file)
    meta["seeds"][str(seed)] = {"file": out_file.name, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                                "wall_seconds": round(seconds, 3), "examples_per_second": round(examples / seconds, 3)}
    atomic_write_text(json.dumps(meta, indent=2) + "\n", meta_path(out_dir, name))
    return out_file


def finish_meta(out_dir: Path, name: str, meta: dict[str, Any]) -> None:
    meta["complete"] = True
    atomic_write_text(json.dumps(meta, indent=2) + "\n", meta_path(out_dir, name))


def check_outputs(files: list[Path], allow_mixed: bool = False) -> dict[str, list[Path]]:
    """Group ``files`` by the decode that made them (a meta file beside them), checking their content.

    Returns {meta file name or "": files}. A file whose content differs from what its decode
    recorded is always an error; files of several decodes, or some described and some not,
    are an error unless ``allow_mixed``.
    """
    owners: dict[Path, tuple[str, str]] = {}
    for folder in {Path(f).parent for f in files}:
        for meta_file in sorted(folder.glob(f"*{META_SUFFIX}")):
            meta = read_meta(meta_file)
            if meta is None or not isinstance(meta.get("seeds"), dict):
                raise UserError(f"{meta_file} is not a readable decode meta file (truncated or changed): the files "
                                f"it describes cannot be checked; decode them again")
            for entry in meta["seeds"].values():
                if isinstance(entry, dict) and "file" in entry:
                    owners[(folder / entry["file"]).resolve()] = (meta_file.name, entry.get("sha256", ""))
    groups: dict[str, list[Path]] = {}
    for file in files:
        owner, digest = owners.get(Path(file).resolve(), ("", ""))
        if owner and sha256_of(Path(file)) != digest:
            raise UserError(f"{file} is not the file its decode wrote ({owner} records another content): it was "
                            f"changed or left by another run")
        groups.setdefault(owner, []).append(Path(file))
    if len(groups) > 1 and not allow_mixed:
        names = ", ".join(sorted(k or "files no decode describes" for k in groups))
        raise UserError(f"the files come from {len(groups)} different decodes ({names}); select one with --pattern "
                        f"or pass --allow_mixed")
    return groups
