"""Decode outputs that say what made them: meta files, locks, the check that a folder is not mixed, and
finding and scoring a decode's files.

A decode writes, next to its per-seed files ``seed<S>_<name>.json``, one ``decode_<name>.meta.json``
holding the checkpoint's identity (path, size, mtime, SHA-256), every setting that changes the text,
and for each seed file its SHA-256. The meta is written before the first seed file and updated
after each, so an interrupted decode still describes the files it completed (``"complete": false``).

:func:`check_outputs` groups a selection of output files by the decode that made them, and
refuses files that changed after their decode, or (unless allowed) files of different decodes;
:func:`score_files` scores them (:mod:`diffuseq.metrics.files`) once they pass, with notes on what their
meta files say.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import UserError
from .fileio import atomic_write_text, sha256_file
from .metrics.files import FileScores, score_output_files

logger = logging.getLogger(__name__)
META_SUFFIX = ".meta.json"


def meta_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"decode_{name}{META_SUFFIX}"


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
                            f"or use another `out_dir`") from None
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
                            f"use another `out_dir`")
        if old.get("settings") != info["settings"]:
            raise UserError(f"{path} describes a decode with other settings; use another `out_dir`")
        for seed, entry in old.get("seeds", {}).items():
            file = Path(out_dir) / entry.get("file", "")
            if file.is_file() and sha256_file(file) == entry.get("sha256"):
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
        if owner and sha256_file(file) != digest:
            raise UserError(f"{file} is not the file its decode wrote ({owner} records another content): it was "
                            f"changed or left by another run")
        groups.setdefault(owner, []).append(Path(file))
    if len(groups) > 1 and not allow_mixed:
        names = ", ".join(sorted(k or "files no decode describes" for k in groups))
        raise UserError(f"the files come from {len(groups)} different decodes ({names}); select one with `pattern` "
                        f"or pass `allow_mixed`")
    return groups


def _matching(folder: str | Path, pattern: str) -> list[str]:
    """The sorted regular files in ``folder`` matching ``pattern``, less the decoder's ``*.meta.json`` and
    ``*.eval.json``."""
    return sorted(p for p in glob.glob(os.path.join(glob.escape(str(folder)), pattern))
                  if os.path.isfile(p) and not p.endswith((META_SUFFIX, ".eval.json")))


def find_files(folder: str, pattern: str) -> list[str]:
    """The sorted regular files in ``folder`` matching ``pattern``; a ``UserError`` when there are none.

    What the decoder writes beside the outputs (``*.meta.json``, ``*.eval.json``) is skipped.
    """
    if not os.path.isdir(folder):
        raise UserError(f"`folder` {folder}: no such folder")
    files = _matching(folder, pattern)
    if not files:
        raise UserError(f"no files matching {pattern!r} in {folder}")
    return files


def find_decode_folders(root: str, pattern: str) -> list[Path]:
    """The folders to evaluate for ``--folder root``: ``root`` itself when it holds files matching ``pattern``,
    else the decode folders below it that do (``*.samples`` folders, or any holding a ``decode_*.meta.json``:
    an output root such as ``generation_outputs`` holds its decodes two folders down). A ``UserError`` naming
    the layout when there are none."""
    if not os.path.isdir(root):
        raise UserError(f"`folder` {root}: no such folder")
    if _matching(root, pattern):
        return [Path(root)]
    below = sorted({p for p in Path(root).rglob("*.samples") if p.is_dir()}
                   | {p.parent for p in Path(root).rglob(f"decode_*{META_SUFFIX}") if p.is_file()})
    found = [folder for folder in below if _matching(folder, pattern)]
    if not found:
        empty = f"; the {len(below)} decode folder(s) below it hold none either" if below else ""
        raise UserError(f"no files matching {pattern!r} in {root}, nor in a decode folder below it (a *.samples "
                        f"folder, or one holding a decode_*{META_SUFFIX}){empty}; sample_seq2seq.py writes a decode "
                        f"to <out_dir>/<checkpoint folder>/<checkpoint file>.samples/: pass that folder or its "
                        f"`out_dir`")
    return found


def truncation_note(meta: dict[str, Any] | None) -> str | None:
    """A note when the decode a meta file describes cut pairs longer than ``--seq_len`` (None otherwise)."""
    settings = (meta or {}).get("settings") or {}
    cut = ((meta or {}).get("data") or {}).get("truncation")
    if not isinstance(cut, dict) or not cut.get("truncated"):
        return None
    split = f"{settings['split']} " if settings.get("split") else ""
    return (f"{cut['truncated']} of {cut['pairs']} {split}pairs were cut to --seq_len {cut['seq_len']} when "
            f"decoded (the longer side first, as DiffuSeq does), so BLEU is scored against the cut references "
            f"(longest pair {cut['longest']} tokens; --seq_len {cut['seq_len_99']} holds 99% of the pairs)")


def score_files(files: Sequence[str | Path], allow_mixed: bool = False, **options: Any) -> FileScores:
    """Score the seed files of one decode (:func:`diffuseq.metrics.files.score_output_files`, with its
    ``options``), after :func:`check_outputs`: files of different decodes are refused unless ``allow_mixed``.
    The notes say when no meta file describes the files, and when their decode cut long pairs."""
    groups = check_outputs([Path(f) for f in files], allow_mixed=allow_mixed)
    notes = []
    if len(groups) > 1:
        logger.warning("scoring files of %d different decodes together (--allow_mixed)", len(groups))
    elif "" in groups:
        notes.append("no decode meta file describes these files (DiffuSeq's outputs have none): nothing checks "
                     "that they come from one checkpoint and settings")
    for meta_name, group in groups.items():
        note = truncation_note(read_meta(group[0].parent / meta_name)) if meta_name else None
        if note:
            notes.append(note)
    result = score_output_files(files, **options)
    result.notes[:0] = notes
    return result
