"""Data: jsonl splits of ``{"src", "trg"}`` pairs turned into fixed-length ``src [SEP] trg`` sequences.

``input_mask`` is 0 on the source and the joining ``[SEP]`` and 1 on the target
and on all padding (the model generates the padding, which decides the length).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .. import dist_util
from ..errors import UserError
from ..fileio import is_blank, parse_jsonl_line
from .vocab import Vocabulary

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
# The shortest sequence holding one token per side: [CLS] a [SEP] [SEP] [CLS] b [SEP].
MIN_SEQ_LEN = 7
MAX_SEQ_LEN = 512  # the encoder's positions


def _careful_pair(path: Path, lineno: int, raw: bytes) -> tuple[str, str] | None:
    """One line read as :func:`diffuseq.fileio.read_jsonl` reads it: None for a blank line, else its pair, or
    the UserError naming the file and line."""
    record = parse_jsonl_line(path, lineno, raw)
    if is_blank(record):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("src"), str) \
            or not isinstance(record.get("trg"), str):
        raise UserError(f"{path}:{lineno}: a line needs string fields \"src\" and \"trg\"")
    return record["src"], record["trg"]


# A line as json.dumps writes a pair whose texts need no escapes: parsed by this alone, to the same strings
_PLAIN_PAIR = re.compile(r'\{"src": ?"([^"\\\x00-\x1f]*)", ?"trg": ?"([^"\\\x00-\x1f]*)"\}[ \t\r]*')
_SCAN = json.JSONDecoder().scan_once
_TEXT_1, _TEXT_2 = operator.itemgetter(1), operator.itemgetter(2)


def _fast_batch(lines: list[bytes]) -> tuple[list[str], list[str]] | None:
    """The pairs of ``lines`` when every line is one JSON object with string "src" and "trg", else None (a
    blank or malformed line: the caller reads them one by one, for the error's line).

    Most lines are matched by one regular expression; the others (escapes, other keys or spacing) are
    parsed by the JSON module's C scanner.
    """
    try:
        parts = b"".join(lines).decode("utf-8").split("\n")
        if parts[-1] == "":
            parts.pop()
        if len(parts) != len(lines):
            return None
        found: list[Any] = list(map(_PLAIN_PAIR.fullmatch, parts))
        for index in [index for index, match in enumerate(found) if match is None]:
            record, end = _SCAN(parts[index], 0)
            if parts[index][end:].strip(" \t\r") or type(record) is not dict \
                    or type(record.get("src")) is not str or type(record.get("trg")) is not str:
                return None
            found[index] = (None, record["src"], record["trg"])
    except (ValueError, StopIteration):  # UnicodeDecodeError and JSONDecodeError included
        return None
    return list(map(_TEXT_1, found)), list(map(_TEXT_2, found))


def parse_lines(path: Path, first_line: int, lines: list[bytes]) -> tuple[list[str], list[str]]:
    """The (sources, targets) of ``lines`` of ``path``, the first being line ``first_line``; blank lines are
    skipped and a malformed one is the UserError :func:`read_jsonl_pairs` gives."""
    fast = _fast_batch(lines)
    if fast is not None:
        return fast
    sources, targets = [], []
    for lineno, raw in enumerate(lines, first_line):
        pair = _careful_pair(path, lineno, raw)
        if pair is not None:
            sources.append(pair[0])
            targets.append(pair[1])
    return sources, targets


def iter_pair_batches(path: Path, max_examples: int | None = None,
                      batch_size: int = 50_000) -> Iterator[tuple[list[str], list[str]]]:
    """The (sources, targets) of a jsonl file in batches of up to ``batch_size`` pairs, read with
    :func:`read_jsonl_pairs`'s rules and errors (checked at the end: no examples, every text empty);
    no line after the ``max_examples``-th pair is read."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {path} does not exist")
    count, found_text, lineno = 0, False, 1
    with path.open("rb") as handle:
        while max_examples is None or count < max_examples:
            want = batch_size if max_examples is None else min(batch_size, max_examples - count)
            sources: list[str] = []
            targets: list[str] = []
            while len(sources) < want:
                lines = list(itertools.islice(handle, want - len(sources)))
                if not lines:
                    break
                more_sources, more_targets = parse_lines(path, lineno, lines)
                lineno += len(lines)
                sources += more_sources
                targets += more_targets
            if not sources:
                break
            count += len(sources)
            found_text = found_text or any(src.strip() or trg.strip() for src, trg in zip(sources, targets))
            yield sources, targets
    if not count:
        raise UserError(f"{path} holds no examples")
    if not found_text:
        raise UserError(f"{path}: every \"src\" and \"trg\" is empty")


def read_jsonl_pairs(path: Path, max_examples: int | None = None) -> list[tuple[str, str]]:
    """(src, trg) pairs of a jsonl file; a malformed line is a UserError naming the file and line."""
    return [pair for sources, targets in iter_pair_batches(path, max_examples) for pair in zip(sources, targets)]


def check_split(path: Path, cache: str = "") -> None:
    """Check every line of a split file before a run writes anything, holding none of it in memory: rank 0
    reads it and tells the others. A file whose tokenized cache was built from its present content (see
    :mod:`diffuseq.data.cache`) was checked then and is not read again."""
    error = None
    if dist_util.rank() == 0:
        try:
            from .cache import checked_before

            if cache.lower() == "none" or not checked_before(Path(path), cache):
                for _ in iter_pair_batches(path):
                    pass
        except UserError as err:
            error = str(err)
    error = dist_util.broadcast_object(error)
    if error:
        raise UserError(error)


def split_path(data_dir: Path, split: str) -> Path:
    """``data_dir/<split>.jsonl``, with a clear error when the folder or split is missing."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} does not exist" + (
            " (a relative path is read from the current folder; pass `data_dir`)" if not data_dir.is_absolute()
            else ""))
    path = data_dir / f"{split}.jsonl"
    if not path.is_file():
        raise UserError(f"data folder {data_dir} has no {split}.jsonl")
    return path


def merge_and_mask(src: list[int], trg: list[int], sep_id: int, pad_id: int,
                   seq_len: int) -> tuple[list[int], list[int]]:
    """DiffuSeq's sequence: drop each side's end token, truncate the longer side until
    ``len(src) + len(trg) <= seq_len - 3``, re-append the end token, join with ``[SEP]``, pad."""
    end = src[-1]
    src, trg = src[:-1], trg[:-1]
    while len(src) + len(trg) > seq_len - 3:
        if len(src) > len(trg):
            src.pop()
        elif len(src) < len(trg):
            trg.pop()
        else:
            src.pop()
            trg.pop()
    src.append(end)
    trg.append(end)
    ids = src + [sep_id] + trg
    mask = [0] * (len(src) + 1)
    return ids + [pad_id] * (seq_len - len(ids)), mask + [1] * (seq_len - len(mask))


@dataclass(frozen=True)
class Truncation:
    """How many pairs of a split did not fit ``seq_len`` (DiffuSeq cuts them without a word).

    A pair needs ``len(src) + len(trg) + 1`` positions (each side with its start and end token, and
    the joining ``[SEP]``); ``seq_len_99`` is the smallest ``--seq_len`` that holds 99% of the pairs.
    """

    pairs: int
    truncated: int
    longest: int
    seq_len_99: int
    seq_len: int

    @classmethod
    def of(cls, needed: list[int], seq_len: int) -> "Truncation":
        ordered = sorted(needed)
        return cls(len(ordered), sum(n > seq_len for n in ordered), ordered[-1] if ordered else 0,
                   ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] if ordered else 0, seq_len)

    @classmethod
    def from_histogram(cls, counts: np.ndarray, seq_len: int) -> "Truncation":
        """The same figures from ``counts[n]``, the number of pairs needing ``n`` positions."""
        pairs = int(counts.sum())
        if not pairs:
            return cls(0, 0, 0, 0, seq_len)
        cumulative = np.cumsum(counts)
        rank = max(0, math.ceil(0.99 * pairs) - 1)  # the index into the sorted lengths, as ``of``
        return cls(pairs, int(counts[seq_len + 1:].sum()), int(np.flatnonzero(counts)[-1]),
                   int(np.searchsorted(cumulative, rank + 1)), seq_len)

    def describe(self, what: str) -> str:
        """One line for the log, e.g. ``test.jsonl: 33 of 200 pairs (16.5%) cut to --seq_len 32 ...``."""
        return (f"{what}: {self.truncated} of {self.pairs} pairs ({100 * self.truncated / max(self.pairs, 1):.1f}%) "
                f"longer than --seq_len {self.seq_len} are cut, as DiffuSeq does (longest pair {self.longest} "
                f"tokens; --seq_len {self.seq_len_99} would hold 99% of them)")

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class RowFile:
    """The rows of a 2-D .npy file, read with ``pread`` when asked for: nothing is mapped into the process,
    so its resident memory does not grow with the rows it reads, and processes reading the same file
    share one copy of it in the page cache. (A memory map would count every page it touched, and a
    kernel that caches files in large folios maps up to 2 MB per row read.)"""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = header(handle)
            self.offset = handle.tell()
        if fortran or len(shape) != 2:
            raise ValueError(f"{path} does not hold a C-order 2-D array")
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        self._fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def read(self, where: slice | np.ndarray) -> np.ndarray:
        """The rows ``where`` (a slice, or indices as numpy or torch index them) as an array [k, columns]."""
        if isinstance(where, slice):
            start, stop, step = where.indices(len(self))
            if step == 1:
                out = np.empty((max(0, stop - start), self.shape[1]), self.dtype)
                self._fill(memoryview(out.reshape(-1).view(np.uint8)), self.offset + start * self.row_bytes)
                return out
            where = np.arange(start, stop, step)
        rows = np.asarray(where, dtype=np.int64).reshape(-1)
        rows = np.where(rows < 0, rows + len(self), rows)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        out = np.empty((len(rows), self.shape[1]), self.dtype)
        view, size = memoryview(out.reshape(-1).view(np.uint8)), self.row_bytes
        for at, row in enumerate(rows.tolist()):
            self._fill(view[at * size:(at + 1) * size], self.offset + row * size)
        return out

    def _fill(self, view: memoryview, offset: int) -> None:
        while len(view):  # one read returns at most about 2 GB
            got = os.preadv(self._fd, [view[:1 << 30]], offset)
            if got <= 0:
                raise OSError(f"{self.path} ends early")
            view, offset = view[got:], offset + got


class Seq2SeqData:
    """The examples of one split: rows of ``src [SEP] trg`` token ids and their masks, and how many pairs were
    cut to fit (``truncation``, for pairs read from a split).

    Either held as tensors (``Seq2SeqData(input_ids, input_mask)``) or read on demand from a tokenized
    cache's files (:meth:`mapped`): ``rows`` reads the rows a batch needs, so a process holds only what
    it uses. ``input_ids`` / ``input_mask`` give the whole split as tensors; on cached data they are
    built on first access and kept, so they are for small data only.
    """

    def __init__(self, input_ids: torch.Tensor, input_mask: torch.Tensor, truncation: Truncation | None = None):
        self._input_ids: torch.Tensor | None = input_ids
        self._input_mask: torch.Tensor | None = input_mask
        self._ids: RowFile | None = None  # cached: token ids [N, seq_len] (uint16 or int32)
        self._srclen: np.ndarray | None = None  # cached: positions of the source and its [SEP] per row (mapped)
        self.truncation = truncation

    @classmethod
    def mapped(cls, ids: RowFile, srclen: np.ndarray, truncation: Truncation | None = None) -> "Seq2SeqData":
        """Rows read from ``ids`` [N, seq_len] with the mask ``arange(seq_len) >= srclen``."""
        data = cls.__new__(cls)
        data._input_ids = data._input_mask = None
        data._ids, data._srclen, data.truncation = ids, srclen, truncation
        return data

    def __len__(self) -> int:
        return len(self._ids) if self._ids is not None else self._input_ids.size(0)

    def rows(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, input_mask)`` of the rows ``index`` (a tensor of indices or a slice), int64 [k, seq_len]."""
        if self._ids is None:
            return self._input_ids[index], self._input_mask[index]
        where = index if isinstance(index, slice) else np.asarray(index.cpu().numpy(), dtype=np.int64)
        ids = self._ids.read(where).astype(np.int64)
        srclen = np.array(self._srclen[where], dtype=np.int64)
        mask = np.arange(ids.shape[1], dtype=np.int64)[None, :] >= srclen[:, None]
        return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))

    def _materialise(self) -> None:
        if self._input_ids is None:
            self._input_ids, self._input_mask = self.rows(slice(None))

    @property
    def input_ids(self) -> torch.Tensor:
        """Every row's token ids, int64 [N, seq_len] (cached data: the whole split in memory, for small data)."""
        self._materialise()
        return self._input_ids

    @property
    def input_mask(self) -> torch.Tensor:
        """Every row's mask, int64 [N, seq_len]: 0 on the source and its [SEP], 1 on the target and padding."""
        self._materialise()
        return self._input_mask


def check_seq_len(seq_len: int) -> None:
    """A UserError unless ``seq_len`` holds a pair and fits the encoder's positions."""
    if seq_len < MIN_SEQ_LEN:
        raise UserError(f"`seq_len` {seq_len} is too small: it must hold at least one token of source and of "
                        f"target with their start/end tokens and the [SEP] ({MIN_SEQ_LEN})")
    if seq_len > MAX_SEQ_LEN:
        raise UserError(f"`seq_len` {seq_len} exceeds the model's {MAX_SEQ_LEN} positions")


def encode_pairs(pairs: list[tuple[str, str]], vocab: Vocabulary, seq_len: int) -> Seq2SeqData:
    """Tokenise and merge pairs into tensors."""
    check_seq_len(seq_len)
    src_ids = vocab.encode_batch([src for src, _ in pairs])
    trg_ids = vocab.encode_batch([trg for _, trg in pairs])
    merged = [merge_and_mask(s, t, vocab.sep_id, vocab.pad_id, seq_len) for s, t in zip(src_ids, trg_ids)]
    return Seq2SeqData(torch.tensor([ids for ids, _ in merged], dtype=torch.long),
                       torch.tensor([mask for _, mask in merged], dtype=torch.long),
                       Truncation.of([len(s) + len(t) + 1 for s, t in zip(src_ids, trg_ids)], seq_len))


def encode_sources(sources: list[str], vocab: Vocabulary, seq_len: int) -> Seq2SeqData:
    """Sequences of source texts alone, to generate their targets: ``src [SEP]`` then padding (all generated).

    The source is truncated as DiffuSeq truncates the longer side of a pair whose target is as
    long as the source: one longer than about half of ``seq_len`` loses its end.
    """
    if seq_len < MIN_SEQ_LEN:
        raise UserError(f"seq_len {seq_len} is too small to hold a source and a target")
    ids_rows, mask_rows, needed = [], [], []
    for src in vocab.encode_batch(sources):
        ids, mask = merge_and_mask(list(src), list(src), vocab.sep_id, vocab.pad_id, seq_len)
        kept = len(mask) - sum(mask)  # the source and its [SEP]
        ids_rows.append(ids[:kept] + [vocab.pad_id] * (seq_len - kept))
        mask_rows.append(mask)
        needed.append(2 * len(src) + 1)  # the source and a target as long
    return Seq2SeqData(torch.tensor(ids_rows, dtype=torch.long), torch.tensor(mask_rows, dtype=torch.long),
                       Truncation.of(needed, seq_len))


def load_split(data_dir: Path, split: str, vocab: Vocabulary, seq_len: int, max_examples: int | None = None,
               report: bool = False, cache: str = "") -> Seq2SeqData:
    """Read and encode ``data_dir/<split>.jsonl``; with ``report``, log how many pairs were cut to ``seq_len``
    (a warning when any was).

    ``cache`` is ``--data_cache``: '' for the tokenized cache in its default folder, a folder, or 'none'
    to tokenize in memory at every call (see :mod:`diffuseq.data.cache`).
    """
    path = split_path(data_dir, split)
    check_seq_len(seq_len)
    data = None
    if cache.lower() != "none":
        from .cache import open_split

        data = open_split(path, split, vocab, seq_len, max_examples, cache)
    if data is None:
        data = encode_pairs(read_jsonl_pairs(path, max_examples), vocab, seq_len)
    if report and data.truncation is not None:
        log = logger.warning if data.truncation.truncated else logger.info
        log(data.truncation.describe(str(path)))
    return data
