"""Diversity: dist-1 of one sentence, div-4 across the candidates of one input (from n-gram counts)."""

from __future__ import annotations

from typing import Sequence

from .bleu import MAX_ORDER, NgramStats


def dist1_from_stats(stats: NgramStats) -> float:
    """Distinct unigrams / unigrams of one sentence (0 for an empty one)."""
    return len(stats.counts[0]) / stats.length if stats.length else 0


def div4_from_stats(stats: Sequence[NgramStats]) -> float:
    """Distinct 4-grams / 4-grams over all candidates of one input (DiffuSeq's inter-sentence div-4)."""
    total = sum(max(0, s.length - (MAX_ORDER - 1)) for s in stats)
    if total == 0:
        return 0
    unique = set()
    for s in stats:
        unique.update(s.counts[MAX_ORDER - 1])
    return len(unique) / total
