"""Data: jsonl splits of ``{"src", "trg"}`` pairs turned into fixed-length ``src [SEP] trg`` sequences.

``input_mask`` is 0 on the source and the joining ``[SEP]`` and 1 on the target
and on all padding (the model generates the padding, which decides the length).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..fileio import read_jsonl
from .vocab import Vocabulary

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
# The shortest sequence holding one token per side: [CLS] a [SEP] [SEP] [CLS] b [SEP].
MIN_SEQ_LEN = 7
MAX_SEQ_LEN = 512  # the encoder's positions


def read_jsonl_pairs(path: Path, max_examples: int | None = None) -> list[tuple[str, str]]:
    """(src, trg) pairs of a jsonl file; a malformed line is a UserError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {path} does not exist")
    pairs = []
    for lineno, record in read_jsonl(path):
        if not isinstance(record, dict) or not isinstance(record.get("src"), str) \
                or not isinstance(record.get("trg"), str):
            raise UserError(f"{path}:{lineno}: a line needs string fields \"src\" and \"trg\"")
        pairs.append((record["src"], record["trg"]))
        if max_examples is not None and len(pairs) >= max_examples:
            break
    if not pairs:
        raise UserError(f"{path} holds no examples")
    if not any(src.strip() or trg.strip() for src, trg in pairs):
        raise UserError(f"{path}: every \"src\" and \"trg\" is empty")
    return pairs


def split_path(data_dir: Path, split: str) -> Path:
    """``data_dir/<split>.jsonl``, with a clear error when the folder or split is missing."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} does not exist" + (
            " (a relative path is read from the current folder; pass --data_dir)" if not data_dir.is_absolute()
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

    def describe(self, what: str) -> str:
        """One line for the log, e.g. ``test.jsonl: 33 of 200 pairs (16.5%) cut to --seq_len 32 ...``."""
        return (f"{what}: {self.truncated} of {self.pairs} pairs ({100 * self.truncated / max(self.pairs, 1):.1f}%) "
                f"longer than --seq_len {self.seq_len} are cut, as DiffuSeq does (longest pair {self.longest} "
                f"tokens; --seq_len {self.seq_len_99} would hold 99% of them)")

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass
class Seq2SeqData:
    """All examples of one split as tensors: ``input_ids`` and ``input_mask`` [N, seq_len], and how many
    pairs were cut to fit (``truncation``, for pairs read from a split)."""

    input_ids: torch.Tensor
    input_mask: torch.Tensor
    truncation: Truncation | None = None

    def __len__(self) -> int:
        return self.input_ids.size(0)


def encode_pairs(pairs: list[tuple[str, str]], vocab: Vocabulary, seq_len: int) -> Seq2SeqData:
    """Tokenise and merge pairs into tensors."""
    if seq_len < MIN_SEQ_LEN:
        raise UserError(f"--seq_len {seq_len} is too small: it must hold at least one token of source and of "
                        f"target with their start/end tokens and the [SEP] ({MIN_SEQ_LEN})")
    if seq_len > MAX_SEQ_LEN:
        raise UserError(f"--seq_len {seq_len} exceeds the model's {MAX_SEQ_LEN} positions")
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


def load_split(data_dir: Path, split: str, vocab: Vocabulary, seq_len: int,
               max_examples: int | None = None, report: bool = False) -> Seq2SeqData:
    """Read and encode ``data_dir/<split>.jsonl``; with ``report``, log how many pairs were cut to ``seq_len``
    (a warning when any was)."""
    path = split_path(data_dir, split)
    data = encode_pairs(read_jsonl_pairs(path, max_examples), vocab, seq_len)
    if report and data.truncation is not None:
        log = logger.warning if data.truncation.truncated else logger.info
        log(data.truncation.describe(str(path)))
    return data
