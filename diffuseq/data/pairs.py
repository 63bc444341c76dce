"""Data: jsonl splits of ``{"src", "trg"}`` pairs turned into fixed-length ``src [SEP] trg`` sequences.

``input_mask`` is 0 on the source and the joining ``[SEP]`` and 1 on the target
and on all padding (the model generates the padding, which decides the length).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..fileio import read_jsonl
from .vocab import Vocabulary

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


@dataclass
class Seq2SeqData:
    """All examples of one split as tensors: ``input_ids`` and ``input_mask`` [N, seq_len]."""

    input_ids: torch.Tensor
    input_mask: torch.Tensor

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
                       torch.tensor([mask for _, mask in merged], dtype=torch.long))


def encode_sources(sources: list[str], vocab: Vocabulary, seq_len: int) -> Seq2SeqData:
    """Sequences of source texts alone, to generate their targets: ``src [SEP]`` then padding (all generated).

    The source is truncated as DiffuSeq truncates the longer side of a pair whose target is as
    long as the source: one longer than about half of ``seq_len`` loses its end.
    """
    if seq_len < MIN_SEQ_LEN:
        raise UserError(f"seq_len {seq_len} is too small to hold a source and a target")
    ids_rows, mask_rows = [], []
    for src in vocab.encode_batch(sources):
        ids, mask = merge_and_mask(list(src), list(src), vocab.sep_id, vocab.pad_id, seq_len)
        kept = len(mask) - sum(mask)  # the source and its [SEP]
        ids_rows.append(ids[:kept] + [vocab.pad_id] * (seq_len - kept))
        mask_rows.append(mask)
    return Seq2SeqData(torch.tensor(ids_rows, dtype=torch.long), torch.tensor(mask_rows, dtype=torch.long))


def load_split(data_dir: Path, split: str, vocab: Vocabulary, seq_len: int,
               max_examples: int | None = None) -> Seq2SeqData:
    """Read and encode ``data_dir/<split>.jsonl``."""
    return encode_pairs(read_jsonl_pairs(split_path(data_dir, split), max_examples), vocab, seq_len)
