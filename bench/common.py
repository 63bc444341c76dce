"""Shared pieces of the benchmarks: a synthetic dataset and vocabulary of a given size, memory readings."""

from __future__ import annotations

import json
import random
import resource
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def synthetic_dataset(folder: Path, vocab_size: int, seq_len: int, n: int = 512, seed: int = 0) -> Path:
    """A data folder whose pairs fill ``seq_len`` and a ``vocab.txt`` of ``vocab_size`` whole words."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    words = [f"w{i}" for i in range(vocab_size - 5)]
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    side = max(1, (seq_len - 5) // 2)
    for split in ("train", "valid", "test"):
        with (folder / f"{split}.jsonl").open("w") as handle:
            for _ in range(n):
                src = " ".join(rng.choices(words, k=side))
                trg = " ".join(rng.choices(words, k=side))
                handle.write(json.dumps({"src": src, "trg": trg}) + "\n")
    return folder


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set size on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
