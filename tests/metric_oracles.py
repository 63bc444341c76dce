"""Plain reference versions of the diversity metrics and MBR (what DiffuSeq's script computes, written
the slow, obvious way): oracles for the fast versions in diffuseq.metrics."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from diffuseq.metrics import sentence_bleu


def dist_n(text: str, n: int = 1) -> float:
    """Distinct n-grams / n-grams of one sentence (whitespace tokens); 0 when it has no n-gram."""
    toks = text.split()
    grams = list(zip(*(toks[i:] for i in range(n))))
    return len(set(grams)) / len(grams) if grams else 0


def div_n(candidates: Sequence[str], n: int = 4) -> float:
    """Distinct n-grams / n-grams over all candidates of one input (DiffuSeq's inter-sentence div-n)."""
    grams: list[tuple[str, ...]] = []
    for text in candidates:
        toks = text.split()
        grams.extend(zip(*(toks[i:] for i in range(n))))
    return len(set(grams)) / len(grams) if grams else 0


def self_bleu(candidates: Sequence[str]) -> float:
    """Mean ``BLEU(hyp=c_i, ref=c_j)`` over pairs ``i < j`` (0 for one candidate)."""
    vals = [sentence_bleu(candidates[i], candidates[j]) for i in range(len(candidates))
            for j in range(i + 1, len(candidates))]
    return float(np.mean(vals)) if vals else 0.0


def mbr_select(candidates: Sequence[str]) -> int:
    """Index of the candidate with the highest ``sum_{j != i} BLEU(hyp=c_i, ref=c_j)``; first on ties."""
    sums = [sum(sentence_bleu(c, o) for j, o in enumerate(candidates) if j != i) for i, c in enumerate(candidates)]
    return int(np.argmax(sums))
