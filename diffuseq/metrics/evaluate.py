"""Scoring many seed files over the same inputs: per-file metrics, diversity or MBR, on a process pool."""

from __future__ import annotations

import logging
import multiprocessing
import os
from dataclasses import asdict, dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np

from .bleu import NgramStats, bleu_from_stats, mbr_from_matrix, pair_bleu_matrix, self_bleu_from_matrix
from .diversity import dist1_from_stats, div4_from_stats
from .rouge import rouge_l_from_tokens, rouge_tokens

logger = logging.getLogger(__name__)


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
            out["dist1"][i, f] = dist1_from_stats(hyp)
            out["length"][i, f] = hyp.length
        if n_files > 1 and (do_mbr or do_div):
            mat = pair_bleu_matrix(cand_stats, both=do_mbr)
            if do_div:
                out["self_bleu"][i] = self_bleu_from_matrix(mat)
                out["div4"][i] = div4_from_stats(cand_stats)
            if do_mbr:
                best = mbr_from_matrix(mat)
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
