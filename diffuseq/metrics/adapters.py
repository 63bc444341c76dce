"""Metrics from other packages: sacreBLEU corpus BLEU, and BERTScore from a local model folder only."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
from typing import Any, Optional, Sequence

from ..errors import UserError
from .evaluate import default_workers


def corpus_bleu_sacrebleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """``sacrebleu.corpus_bleu(hyps, [refs]).score`` (0-100, default 13a tokenization)."""
    try:
        import sacrebleu
    except ImportError as err:  # pragma: no cover - sacrebleu is a requirement
        raise UserError("corpus BLEU needs sacrebleu: pip install sacrebleu") from err
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


_WORKER_CORPUS: Optional[tuple[list, list[list[str]], list[int]]] = None  # in a pool worker only: see _start_worker


def _start_worker(scorers: list, hyps: list[list[str]], group: list[int]) -> None:
    """Pool initializer of :func:`corpus_bleu_many`: the worker keeps its call's scorers and hypotheses (inherited
    through fork, not pickled). Set in the pool's worker processes only, which end with the call."""
    global _WORKER_CORPUS
    _WORKER_CORPUS = (scorers, hyps, group)


def _worker_task(f: int) -> float:
    scorers, hyps, group = _WORKER_CORPUS  # type: ignore[misc]
    return _corpus_score(scorers[group[f]], hyps[f])


def _corpus_score(scorer: Any, hyps: list[str]) -> float:
    return float(scorer.corpus_score(hyps, None).score)


def corpus_bleu_many(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]],
                     workers: Optional[int] = None) -> list[float]:
    """sacreBLEU corpus BLEU of several hypothesis lists, each with its own reference list.

    Equal reference lists are tokenized once (sacrebleu's cached references) and the lists are
    scored on a fork pool; each value equals :func:`corpus_bleu_sacrebleu`.
    """
    try:
        from sacrebleu.metrics import BLEU
    except ImportError as err:  # pragma: no cover - sacrebleu is a requirement
        raise UserError("corpus BLEU needs sacrebleu: pip install sacrebleu") from err
    keys: dict[tuple[str, ...], int] = {}
    group = [keys.setdefault(tuple(refs), len(keys)) for refs in references]
    scorers = [BLEU(references=[list(refs)]) for refs in keys]
    hyps = [list(h) for h in hypotheses]
    workers = default_workers() if workers is None else max(1, workers)
    if workers > 1 and len(hyps) > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(min(workers, len(hyps)), initializer=_start_worker,
                                                      initargs=(scorers, hyps, group)) as pool:
            return pool.map(_worker_task, range(len(hyps)), chunksize=1)
    return [_corpus_score(scorers[group[f]], hyps[f]) for f in range(len(hyps))]


def check_bertscore(model_path: str) -> None:
    """Fail with a one-line ``UserError`` unless bert_score, transformers and the local model are there."""
    missing = [pkg for pkg in ("bert_score", "transformers") if importlib.util.find_spec(pkg) is None]
    if missing:
        raise UserError(f"`bertscore_model` needs the packages {', '.join(missing)}: "
                        "pip install bert-score transformers")
    if not os.path.isdir(model_path):
        raise UserError(f"`bertscore_model` {model_path}: no such local model folder; give the folder of a "
                        "downloaded model (the paper uses microsoft/deberta-xlarge-mnli)")


def bertscore_f1(candidates: Sequence[str], references: Sequence[str], model_path: str,
                 num_layers: Optional[int] = None, batch_size: int = 64) -> list[float]:
    """BERTScore F1 per sentence from a local model folder, offline (as DiffuSeq: no idf, no rescaling)."""
    check_bertscore(model_path)
    import bert_score  # lazy: heavy, optional
    from bert_score.utils import model2layers

    if num_layers is None:
        base = os.path.basename(os.path.normpath(model_path))
        found = [layers for name, layers in model2layers.items() if name.split("/")[-1] == base]
        if not found:
            raise UserError(f"`bertscore_model` {model_path}: unknown model name {base!r}; "
                            "give its layer with `bertscore_num_layers` (deberta-xlarge-mnli: 40)")
        num_layers = found[0]
    _, _, f1 = bert_score.score(list(candidates), list(references), model_type=model_path,
                                num_layers=num_layers, batch_size=batch_size, verbose=False)
    return [float(x) for x in f1.tolist()]
