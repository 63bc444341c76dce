"""Sentence BLEU as NLTK's ``sentence_bleu`` with smoothing method 4, bit for bit, from n-gram counts
computed once per sentence; and the candidate-pair BLEU matrix behind self-BLEU and MBR."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MAX_ORDER = 4
_SMOOTH_K = 5  # nltk SmoothingFunction().k, used by method4


@dataclass(frozen=True)
class NgramStats:
    """Length and n-gram counts (orders 1..4) of one tokenized sentence, computed once."""

    length: int
    counts: tuple[dict, ...]

    @classmethod
    def from_tokens(cls, tokens: Sequence[str]) -> "NgramStats":
        """Count the 1- to 4-grams of ``tokens`` (1-grams keyed by the token itself)."""
        toks = list(tokens)
        counts = [Counter(toks)]
        for n in range(2, MAX_ORDER + 1):
            counts.append(Counter(zip(*(toks[i:] for i in range(n)))))
        return cls(len(toks), tuple(counts))

    @classmethod
    def from_text(cls, text: str) -> "NgramStats":
        """Whitespace-tokenize ``text`` and count its n-grams."""
        return cls.from_tokens(text.split())


def ngram_matches(a: NgramStats, b: NgramStats) -> tuple[int, ...]:
    """Clipped n-gram matches ``sum_g min(count_a(g), count_b(g))`` per order; symmetric in a, b."""
    out = []
    for ca, cb in zip(a.counts, b.counts):
        if len(ca) > len(cb):
            ca, cb = cb, ca
        out.append(sum([min(v, cb[g]) for g, v in ca.items() if g in cb]))
    return tuple(out)


def bleu_from_matches(matches: Sequence[int], hyp_len: int, ref_len: int) -> float:
    """NLTK's sentence BLEU-4 with smoothing method 4, from clipped matches and the two lengths.

    Mirrors ``nltk.translate.bleu_score.corpus_bleu`` for one hypothesis and one reference, float
    operation for float operation: modified precisions ``m_n / max(1, hyp_len - n + 1)``; 0 when no
    unigram matches; method4 replaces a zero precision by ``1 / (2**k * 5 / ln(hyp_len)) / denominator``
    (k = 1, 2, ... over the zero orders) when ``hyp_len > 1``, otherwise the order is left out; then
    ``BP * exp(fsum(0.25 * ln p_n))``.
    """
    if matches[0] == 0:
        return 0.0
    logs = []
    incvnt = 1
    log_len = math.log(hyp_len) if hyp_len > 1 else 0.0
    for n in range(MAX_ORDER):
        denom = hyp_len - n
        if denom < 1:
            denom = 1
        m = matches[n]
        if m:
            logs.append(0.25 * math.log(m / denom))
        elif hyp_len > 1:
            logs.append(0.25 * math.log((1 / (2**incvnt * _SMOOTH_K / log_len)) / denom))
            incvnt += 1
    if hyp_len > ref_len:
        return math.exp(math.fsum(logs))
    return math.exp(1 - ref_len / hyp_len) * math.exp(math.fsum(logs))


def bleu_from_stats(hyp: NgramStats, ref: NgramStats) -> float:
    """Sentence BLEU (NLTK, method4) of ``hyp`` against the single reference ``ref``."""
    return bleu_from_matches(ngram_matches(hyp, ref), hyp.length, ref.length)


def sentence_bleu(hypothesis: str | Sequence[str], reference: str | Sequence[str]) -> float:
    """NLTK ``sentence_bleu([reference], hypothesis, smoothing_function=method4)``, bit-identical.

    Strings are whitespace-tokenized; token lists are used as they are.
    """
    hyp = NgramStats.from_text(hypothesis) if isinstance(hypothesis, str) else NgramStats.from_tokens(hypothesis)
    ref = NgramStats.from_text(reference) if isinstance(reference, str) else NgramStats.from_tokens(reference)
    return bleu_from_stats(hyp, ref)


def pair_bleu_matrix(stats: Sequence[NgramStats], both: bool) -> np.ndarray:
    """``S[i, j] = BLEU(hyp=c_i, ref=c_j)`` (diagonal 0); only ``i < j`` unless ``both``."""
    k = len(stats)
    mat = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            m = ngram_matches(stats[i], stats[j])
            mat[i, j] = bleu_from_matches(m, stats[i].length, stats[j].length)
            if both:
                mat[j, i] = bleu_from_matches(m, stats[j].length, stats[i].length)
    return mat


def self_bleu_from_matrix(mat: np.ndarray) -> float:
    k = mat.shape[0]
    vals = [mat[i, j] for i in range(k) for j in range(i + 1, k)]
    return float(np.mean(vals)) if vals else 0.0


def mbr_from_matrix(mat: np.ndarray) -> int:
    return int(np.argmax(np.sum(mat, -1)))
