"""Evaluation metrics with DiffuSeq's definitions, computed fast and offline.

Everything here reproduces ``scripts/eval_seq2seq.py`` of DiffuSeq (the version whose MBR selection
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

import importlib.util
import logging
import math
import multiprocessing
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from diffuseq.errors import UserError

logger = logging.getLogger(__name__)

MAX_ORDER = 4
_SMOOTH_K = 5  # nltk SmoothingFunction().k, used by method4


# ----------------------------------------------------------------------------------------- cleaning


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens DiffuSeq strips from decoded text (``--sos --eos --sep --pad``)."""

    sos: str = "[CLS]"
    eos: str = "[SEP]"
    sep: str = "[SEP]"
    pad: str = "[PAD]"


def _remove(text: str, tokens: Iterable[str]) -> str:
    for tok in tokens:
        if tok:
            text = text.replace(tok, "")
    return text


def clean_recover(text: str, special: SpecialTokens = SpecialTokens()) -> str:
    """Clean a generated text exactly as DiffuSeq: strip, then remove eos, sos, sep and pad."""
    return _remove(text.strip(), (special.eos, special.sos, special.sep, special.pad))


def clean_reference(text: str, special: SpecialTokens = SpecialTokens()) -> str:
    """Clean a reference exactly as DiffuSeq: strip, then remove eos, sos and sep (DiffuSeq keeps pad)."""
    return _remove(text.strip(), (special.eos, special.sos, special.sep))


def clean_source(text: str, special: SpecialTokens = SpecialTokens()) -> str:
    """Clean a source exactly as DiffuSeq: strip, then remove eos and sos."""
    return _remove(text.strip(), (special.eos, special.sos))


def diffuseq_length(text: str) -> int:
    """DiffuSeq's own length count, ``len(text.split(' '))`` of the cleaned (not re-stripped) text.

    It counts the empty strings left where ``[CLS]``/``[SEP]`` were removed, so it is usually the
    whitespace-token count + 2; offered for comparison with tables that used it.
    """
    return len(text.split(" "))


# --------------------------------------------------------------------------------------------- BLEU


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


# ------------------------------------------------------------------------------------------ ROUGE-L

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


# --------------------------------------------------------------------------------------- diversity


def dist_n(text: str, n: int = 1) -> float:
    """Distinct n-grams / n-grams of one sentence (whitespace tokens); 0 when it has no n-gram."""
    toks = text.split()
    grams = list(zip(*(toks[i:] for i in range(n))))
    return len(set(grams)) / len(grams) if grams else 0


def _dist1_from_stats(stats: NgramStats) -> float:
    return len(stats.counts[0]) / stats.length if stats.length else 0


def div_n(candidates: Sequence[str], n: int = 4) -> float:
    """Distinct n-grams / n-grams over all candidates of one input (DiffuSeq's inter-sentence div-n)."""
    grams: list[tuple[str, ...]] = []
    for text in candidates:
        toks = text.split()
        grams.extend(zip(*(toks[i:] for i in range(n))))
    return len(set(grams)) / len(grams) if grams else 0


def _div4_from_stats(stats: Sequence[NgramStats]) -> float:
    total = sum(max(0, s.length - (MAX_ORDER - 1)) for s in stats)
    if total == 0:
        return 0
    unique = set()
    for s in stats:
        unique.update(s.counts[MAX_ORDER - 1])
    return len(unique) / total


def _pair_bleu_matrix(stats: Sequence[NgramStats], both: bool) -> np.ndarray:
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


def _self_bleu_from_matrix(mat: np.ndarray) -> float:
    k = mat.shape[0]
    vals = [mat[i, j] for i in range(k) for j in range(i + 1, k)]
    return float(np.mean(vals)) if vals else 0.0


def _mbr_from_matrix(mat: np.ndarray) -> int:
    return int(np.argmax(np.sum(mat, -1)))


def self_bleu(candidates: Sequence[str]) -> float:
    """Mean ``BLEU(hyp=c_i, ref=c_j)`` over pairs ``i < j`` of one input's candidates (0 for one candidate)."""
    stats = [NgramStats.from_text(c) for c in candidates]
    return _self_bleu_from_matrix(_pair_bleu_matrix(stats, both=False))


def mbr_select(candidates: Sequence[str]) -> int:
    """Index of the candidate with the highest ``sum_{j != i} BLEU(hyp=c_i, ref=c_j)``; first on ties."""
    stats = [NgramStats.from_text(c) for c in candidates]
    return _mbr_from_matrix(_pair_bleu_matrix(stats, both=True))


# ------------------------------------------------------------------------------------- corpus level


def corpus_bleu_sacrebleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """``sacrebleu.corpus_bleu(hyps, [refs]).score`` (0-100, default 13a tokenization)."""
    try:
        import sacrebleu
    except ImportError as err:  # pragma: no cover - sacrebleu is a requirement
        raise UserError("corpus BLEU needs sacrebleu: pip install sacrebleu") from err
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


_CORPUS_STATE: Optional[tuple[list, list[list[str]], list[int]]] = None


def _corpus_bleu_task(f: int) -> float:
    scorers, hyps, group = _CORPUS_STATE  # type: ignore[misc]
    return float(scorers[group[f]].corpus_score(hyps[f], None).score)


def corpus_bleu_many(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]],
                     workers: Optional[int] = None) -> list[float]:
    """sacreBLEU corpus BLEU of several hypothesis lists, each with its own reference list.

    Equal reference lists are tokenized once (sacrebleu's cached references) and the lists are
    scored on a fork pool; each value equals :func:`corpus_bleu_sacrebleu`.
    """
    global _CORPUS_STATE
    try:
        from sacrebleu.metrics import BLEU
    except ImportError as err:  # pragma: no cover - sacrebleu is a requirement
        raise UserError("corpus BLEU needs sacrebleu: pip install sacrebleu") from err
    keys: dict[tuple[str, ...], int] = {}
    group = [keys.setdefault(tuple(refs), len(keys)) for refs in references]
    scorers = [BLEU(references=[list(refs)]) for refs in keys]
    hyps = [list(h) for h in hypotheses]
    workers = default_workers() if workers is None else max(1, workers)
    _CORPUS_STATE = (scorers, hyps, group)
    try:
        if workers > 1 and len(hyps) > 1 and "fork" in multiprocessing.get_all_start_methods():
            with multiprocessing.get_context("fork").Pool(min(workers, len(hyps))) as pool:
                return pool.map(_corpus_bleu_task, range(len(hyps)), chunksize=1)
        return [_corpus_bleu_task(f) for f in range(len(hyps))]
    finally:
        _CORPUS_STATE = None


def check_bertscore(model_path: str) -> None:
    """Fail with a one-line ``UserError`` unless bert_score, transformers and the local model are there."""
    missing = [pkg for pkg in ("bert_score", "transformers") if importlib.util.find_spec(pkg) is None]
    if missing:
        raise UserError(f"--bertscore_model needs the packages {', '.join(missing)}: "
                        "pip install bert-score transformers")
    if not os.path.isdir(model_path):
        raise UserError(f"--bertscore_model {model_path}: no such local model folder; give the folder of a "
                        "downloaded model (the paper uses microsoft/deberta-xlarge-mnli)")


def bertscore_f1(candidates: Sequence[str], references: Sequence[str], model_path: str,
                 num_layers: Optional[int] = None, batch_size: int = 64) -> list[float]:
    """BERTScore F1 per sentence from a local model folder, offline (as DiffuSeq: no idf, no rescaling)."""
    check_bertscore(model_path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import bert_score  # lazy: heavy, optional
    from bert_score.utils import model2layers

    if num_layers is None:
        base = os.path.basename(os.path.normpath(model_path))
        found = [layers for name, layers in model2layers.items() if name.split("/")[-1] == base]
        if not found:
            raise UserError(f"--bertscore_model {model_path}: unknown model name {base!r}; "
                            "give its layer with --bertscore_num_layers (deberta-xlarge-mnli: 40)")
        num_layers = found[0]
    _, _, f1 = bert_score.score(list(candidates), list(references), model_type=model_path,
                                num_layers=num_layers, batch_size=batch_size, verbose=False)
    return [float(x) for x in f1.tolist()]


# ------------------------------------------------------------------------------------ full evaluation


@dataclass
class Summary:
    """Averaged metrics of one set of outputs (one seed file, or the MBR selection)."""

    bleu: float
    rougeL: float
    dist1: float
    avg_len: float
    n: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON form: ``{"bleu","rougeL","dist1","avg_len","n"}`` plus any extra metric."""
        out = asdict(self)
        out.pop("extra")
        out.update(self.extra)
        return out


@dataclass
class Evaluation:
    """Per-sentence scores of several seed files over the same inputs, and their summaries.

    Arrays are indexed ``[file, input]``; ``mbr_choice[i]`` is the index of the file whose candidate
    MBR keeps for input ``i``.
    """

    bleu: np.ndarray
    rougeL: np.ndarray
    dist1: np.ndarray
    length: np.ndarray
    self_bleu: Optional[np.ndarray] = None
    div4: Optional[np.ndarray] = None
    mbr_choice: Optional[np.ndarray] = None
    mbr_bleu: Optional[np.ndarray] = None
    mbr_rougeL: Optional[np.ndarray] = None
    mbr_dist1: Optional[np.ndarray] = None
    mbr_length: Optional[np.ndarray] = None

    def file_summary(self, f: int) -> Summary:
        """Averages for file number ``f``."""
        return Summary(float(np.mean(self.bleu[f])), float(np.mean(self.rougeL[f])),
                       float(np.mean(self.dist1[f])), float(np.mean(self.length[f])), int(self.bleu.shape[1]))

    def diversity_summary(self) -> Optional[dict]:
        """``{"self_bleu", "div4"}`` averaged over inputs, or None when not computed."""
        if self.self_bleu is None:
            return None
        return {"self_bleu": float(np.mean(self.self_bleu)), "div4": float(np.mean(self.div4))}

    def mbr_summary(self) -> Optional[Summary]:
        """Averages of the MBR selection, or None when not computed."""
        if self.mbr_choice is None:
            return None
        return Summary(float(np.mean(self.mbr_bleu)), float(np.mean(self.mbr_rougeL)),
                       float(np.mean(self.mbr_dist1)), float(np.mean(self.mbr_length)), int(len(self.mbr_choice)))


def _eval_chunk(task: tuple[list[list[str]], list[list[str]], bool, bool]) -> dict[str, np.ndarray]:
    """Score a chunk of inputs; ``recs[i][f]`` / ``refs[i][f]`` are the cleaned texts of input i in file f."""
    recs, refs, do_mbr, do_div = task
    n_in, n_files = len(recs), len(recs[0])
    out = {key: np.zeros((n_in, n_files)) for key in ("bleu", "rougeL", "dist1", "length")}
    if do_div:
        out["self_bleu"] = np.zeros(n_in)
        out["div4"] = np.zeros(n_in)
    if do_mbr:
        for key in ("mbr_bleu", "mbr_rougeL", "mbr_dist1", "mbr_length"):
            out[key] = np.zeros(n_in)
        out["mbr_choice"] = np.zeros(n_in, dtype=np.int64)
    for i in range(n_in):
        ngram_cache: dict[str, NgramStats] = {}
        rouge_cache: dict[str, list[str]] = {}

        def stats_of(text: str) -> NgramStats:
            s = ngram_cache.get(text)
            if s is None:
                s = ngram_cache[text] = NgramStats.from_text(text)
            return s

        def rtoks(text: str) -> list[str]:
            t = rouge_cache.get(text)
            if t is None:
                t = rouge_cache[text] = rouge_tokens(text)
            return t

        cand_stats = [stats_of(t) for t in recs[i]]
        for f in range(n_files):
            hyp, ref = cand_stats[f], stats_of(refs[i][f])
            out["bleu"][i, f] = bleu_from_stats(hyp, ref)
            out["rougeL"][i, f] = rouge_l_from_tokens(rtoks(recs[i][f]), rtoks(refs[i][f]))
            out["dist1"][i, f] = _dist1_from_stats(hyp)
            out["length"][i, f] = hyp.length
        if n_files > 1 and (do_mbr or do_div):
            mat = _pair_bleu_matrix(cand_stats, both=do_mbr)
            if do_div:
                out["self_bleu"][i] = _self_bleu_from_matrix(mat)
                out["div4"][i] = _div4_from_stats(cand_stats)
            if do_mbr:
                best = _mbr_from_matrix(mat)
                ref0 = refs[i][0]  # DiffuSeq scores the MBR choice against the first file's reference
                out["mbr_choice"][i] = best
                out["mbr_bleu"][i] = (out["bleu"][i, best] if refs[i][best] == ref0
                                      else bleu_from_stats(cand_stats[best], stats_of(ref0)))
                out["mbr_rougeL"][i] = (out["rougeL"][i, best] if refs[i][best] == ref0
                                        else rouge_l_from_tokens(rtoks(recs[i][best]), rtoks(ref0)))
                out["mbr_dist1"][i] = out["dist1"][i, best]
                out["mbr_length"][i] = out["length"][i, best]
    return out


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _chunks(recs: list[list[str]], refs: list[list[str]], size: int, do_mbr: bool,
            do_div: bool) -> Iterator[tuple[list[list[str]], list[list[str]], bool, bool]]:
    for start in range(0, len(recs), size):
        yield recs[start:start + size], refs[start:start + size], do_mbr, do_div


def evaluate(recovers: Sequence[Sequence[str]], references: Sequence[Sequence[str]], *, mbr: bool = False,
             diversity: bool = False, workers: Optional[int] = None, chunk_size: int = 64,
             min_parallel: int = 4000, progress: Optional[bool] = None) -> Evaluation:
    """Score cleaned outputs of several seeds over the same inputs.

    ``recovers[f][i]`` and ``references[f][i]`` are the cleaned generated text and reference of input
    ``i`` in file ``f``; all files must have the same number of inputs. Per-file BLEU, ROUGE-L, dist-1
    and length are always computed; with several files, ``diversity`` adds self-BLEU and div-4 and
    ``mbr`` the MBR selection. The work is split over a fork pool of ``workers`` processes when there
    are at least ``min_parallel`` sentences; ``progress`` shows a tqdm bar on stderr (None: only on a TTY).
    """
    n_files = len(recovers)
    if n_files == 0:
        raise ValueError("no files to evaluate")
    n_inputs = len(recovers[0])
    if n_inputs == 0:
        raise ValueError("no inputs to evaluate")
    for f in range(n_files):
        if len(recovers[f]) != n_inputs or len(references[f]) != n_inputs:
            raise ValueError("all files must have the same number of inputs")
    if n_files < 2:
        mbr = diversity = False
    by_input_recs = [[recovers[f][i] for f in range(n_files)] for i in range(n_inputs)]
    by_input_refs = [[references[f][i] for f in range(n_files)] for i in range(n_inputs)]
    workers = default_workers() if workers is None else max(1, workers)
    parallel = workers > 1 and n_inputs * n_files >= min_parallel and n_inputs > chunk_size
    tasks = _chunks(by_input_recs, by_input_refs, chunk_size, mbr, diversity)

    from tqdm import tqdm

    what = "MBR" if mbr else "diversity" if diversity else "metrics"
    bar = tqdm(total=n_inputs, desc=f"scoring ({what})", unit="input", leave=False,
               disable=None if progress is None else not progress)
    parts: list[dict[str, np.ndarray]] = []
    try:
        if parallel:
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
            logger.debug("scoring %d inputs x %d files on %d processes", n_inputs, n_files, workers)
            with ctx.Pool(workers) as pool:
                for part in pool.imap(_eval_chunk, tasks):
                    parts.append(part)
                    bar.update(len(part["bleu"]))
        else:
            for task in tasks:
                part = _eval_chunk(task)
                parts.append(part)
                bar.update(len(part["bleu"]))
    finally:
        bar.close()

    def cat(key: str) -> Optional[np.ndarray]:
        if key not in parts[0]:
            return None
        return np.concatenate([p[key] for p in parts])

    def per_file(key: str) -> np.ndarray:
        return np.ascontiguousarray(cat(key).T)

    return Evaluation(bleu=per_file("bleu"), rougeL=per_file("rougeL"), dist1=per_file("dist1"),
                      length=per_file("length"),
                      self_bleu=cat("self_bleu"), div4=cat("div4"), mbr_choice=cat("mbr_choice"),
                      mbr_bleu=cat("mbr_bleu"), mbr_rougeL=cat("mbr_rougeL"), mbr_dist1=cat("mbr_dist1"),
                      mbr_length=cat("mbr_length"))
