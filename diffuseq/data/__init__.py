"""Data: jsonl pairs, DiffuSeq's sequences, batches and vocabularies."""

from .batching import BatchStream
from .pairs import (SPLITS, Seq2SeqData, check_split, encode_pairs, encode_sources, load_split, merge_and_mask,
                    read_jsonl_pairs, split_path)

__all__ = ["SPLITS", "BatchStream", "Seq2SeqData", "check_split", "encode_pairs", "encode_sources", "load_split",
           "merge_and_mask", "read_jsonl_pairs", "split_path"]
