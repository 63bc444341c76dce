"""ROUGE-L F-measure as rouge-score computes it (its tokenizer, no stemming), with a bit-parallel LCS."""

from __future__ import annotations

import re
from typing import Sequence

_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokenizer (no stemming): lower-case, keep runs of ``[a-z0-9]``."""
    return _ROUGE_TOKEN.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (bit-parallel, O(len(b)) big-int ops)."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        m = masks.get(tok)
        if m is not None:
            u = v & m
            v = (v + u) | (v - u)
    return len(a) - (v & full).bit_count()


def rouge_l_from_tokens(hyp: Sequence[str], ref: Sequence[str]) -> float:
    """ROUGE-L F-measure as rouge-score computes it, from rouge tokens."""
    if not hyp or not ref:
        return 0.0
    lcs = lcs_length(ref, hyp)
    precision = lcs / len(hyp)
    recall = lcs / len(ref)
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def rouge_l(hypothesis: str, reference: str) -> float:
    """rouge-score ``RougeScorer(['rougeL']).score(reference, hypothesis)['rougeL'].fmeasure``."""
    return rouge_l_from_tokens(rouge_tokens(hypothesis), rouge_tokens(reference))
