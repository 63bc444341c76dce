"""Evaluation metrics with DiffuSeq's definitions, computed fast and offline.

This package reproduces ``scripts/eval_seq2seq.py`` of DiffuSeq (the version whose MBR selection
matches the published ``mbr.jsonl`` files), only faster:

* BLEU: NLTK ``sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method4)`` on
  whitespace tokens, averaged over sentences. :func:`sentence_bleu` re-implements it from n-gram
  counts computed once per sentence and gives bit-identical results (tested against NLTK).
* ROUGE-L: rouge-score's ``RougeScorer(['rougeL'])`` F-measure (lower-cased ``[a-z0-9]+`` tokens),
  averaged; the LCS is computed with a bit-parallel algorithm, identical in value.
* dist-1: unique unigrams / unigrams per sentence (0 for an empty one), averaged.
* avg_len: mean number of whitespace tokens.
* self-BLEU: for one input, the mean of ``BLEU(hyp=c_i, ref=c_j)`` over candidate pairs ``i < j``
  (DiffuSeq's ``diversityOfSet``), averaged over inputs; div-4: distinct 4-grams / 4-grams over all
  candidates of one input, averaged over inputs.
* MBR: for each input, the candidate ``i`` with the largest ``sum_{j != i} BLEU(hyp=c_i, ref=c_j)``
  (first one on ties, as ``np.argmax``).
* corpus BLEU: ``sacrebleu.corpus_bleu`` (0-100 scale), for those who report it.
* BERTScore: only from a local model folder (``bert_score`` imported lazily, never a download).
"""

from __future__ import annotations

from .adapters import bertscore_f1, check_bertscore, corpus_bleu_many, corpus_bleu_sacrebleu
from .bleu import NgramStats, sentence_bleu
from .clean import SpecialTokens, clean_recover, clean_reference, clean_source, diffuseq_length
from .evaluate import Evaluation, Summary, default_workers, evaluate
from .rouge import lcs_length, rouge_l

__all__ = ["Evaluation", "NgramStats", "SpecialTokens", "Summary", "bertscore_f1", "check_bertscore", "clean_recover",
           "clean_reference", "clean_source", "corpus_bleu_many", "corpus_bleu_sacrebleu", "default_workers",
           "diffuseq_length", "evaluate", "lcs_length", "rouge_l", "sentence_bleu"]
