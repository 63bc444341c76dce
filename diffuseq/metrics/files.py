"""Scoring output files as DiffuSeq's ``eval_seq2seq.py`` does, as a function: read and clean each seed
file, check they hold the same inputs, then per-file metrics, diversity or MBR, corpus BLEU and BERTScore
when asked. (That the files come from one decode is checked a layer above, by :mod:`diffuseq.outputs`.)"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import UserError
from ..fileio import read_jsonl
from .adapters import bertscore_f1, corpus_bleu_many
from .clean import SpecialTokens, clean_recover, clean_reference, clean_source, diffuseq_length
from .evaluate import evaluate

logger = logging.getLogger(__name__)
FIELDS = ("recover", "reference", "source")


@dataclass
class Outputs:
    """The cleaned lines of one output file."""

    path: str
    name: str
    recovers: list[str]
    references: list[str]
    sources: list[str]
    lengths_diffuseq: list[int]


@dataclass
class FileScores:
    """The scores of a set of seed files: ``payload`` is what ``--json`` writes."""

    payload: dict[str, Any]
    outputs: list[Outputs]
    mbr_texts: Optional[list[str]] = None
    notes: list[str] = field(default_factory=list)


def read_outputs(path: str, special: SpecialTokens) -> Outputs:
    """Read and clean one output file; malformed lines are a ``UserError`` naming the file and line."""
    recs, refs, srcs, lens = [], [], [], []
    try:
        for lineno, row in read_jsonl(path):
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object with fields {', '.join(FIELDS)}")
            for key in FIELDS:
                if key not in row:
                    raise UserError(f"{path}:{lineno}: missing field {key!r}")
                if not isinstance(row[key], str):
                    raise UserError(f"{path}:{lineno}: field {key!r} is not a string")
            rec = clean_recover(row["recover"], special)
            recs.append(rec)
            refs.append(clean_reference(row["reference"], special))
            srcs.append(clean_source(row["source"], special))
            lens.append(diffuseq_length(rec))
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    if not recs:
        raise UserError(f"{path}: no lines to evaluate (empty file)")
    return Outputs(path, os.path.basename(path), recs, refs, srcs, lens)


def check_aligned(outputs: list[Outputs]) -> None:
    """All files must hold the same inputs: same line counts (error); differing references are logged."""
    first = outputs[0]
    for out in outputs[1:]:
        if len(out.recovers) != len(first.recovers):
            raise UserError(f"{out.path} has {len(out.recovers)} lines but {first.path} has "
                            f"{len(first.recovers)}: the files must be decodes of the same inputs")
    for out in outputs[1:]:
        diff = [i for i, (a, b) in enumerate(zip(first.references, out.references)) if a != b]
        if diff:
            logger.warning("%s: %d references differ from %s (first at line %d); MBR uses the first file's",
                           out.path, len(diff), first.path, diff[0] + 1)


def score_output_files(files: Sequence[str | Path], special: SpecialTokens = SpecialTokens(), mbr: bool = False,
                       corpus_bleu: bool = True, len_mode: str = "tokens", bertscore_model: str | None = None,
                       bertscore_num_layers: int | None = None, bertscore_batch_size: int = 64,
                       workers: int | None = None, progress: bool | None = False) -> FileScores:
    """Score output files over the same inputs, one per seed (see the module docstring)."""
    notes = []
    outputs = [read_outputs(str(path), special) for path in files]
    check_aligned(outputs)
    if mbr and len(outputs) < 2:
        notes.append(f"--mbr needs at least two files, found {len(outputs)}; MBR skipped")
    ev = evaluate([o.recovers for o in outputs], [o.references for o in outputs], mbr=mbr, diversity=not mbr,
                  workers=workers, progress=progress)
    summaries = {}
    for f, out in enumerate(outputs):
        summary = ev.file_summary(f)
        if len_mode == "diffuseq":
            summary.avg_len = float(np.mean(out.lengths_diffuseq))
        summaries[out.name] = summary
    mbr_summary = ev.mbr_summary()
    mbr_texts = mbr_refs = None
    if mbr_summary is not None:
        mbr_texts = [outputs[int(c)].recovers[i] for i, c in enumerate(ev.mbr_choice)]
        mbr_refs = outputs[0].references
        if len_mode == "diffuseq":
            mbr_summary.avg_len = float(np.mean([diffuseq_length(t) for t in mbr_texts]))
    corpus = None
    if corpus_bleu:
        hyp_lists = [o.recovers for o in outputs] + ([mbr_texts] if mbr_texts is not None else [])
        ref_lists = [o.references for o in outputs] + ([mbr_refs] if mbr_texts is not None else [])
        scores = corpus_bleu_many(hyp_lists, ref_lists, workers=workers)
        corpus = {"files": {o.name: scores[f] for f, o in enumerate(outputs)},
                  "mbr": scores[len(outputs)] if mbr_texts is not None else None}
    if bertscore_model:
        for o in outputs:
            f1 = bertscore_f1(o.recovers, o.references, bertscore_model, bertscore_num_layers, bertscore_batch_size)
            summaries[o.name].extra["bertscore"] = float(np.mean(f1))
        if mbr_summary is not None:
            f1 = bertscore_f1(mbr_texts, mbr_refs, bertscore_model, bertscore_num_layers, bertscore_batch_size)
            mbr_summary.extra["bertscore"] = float(np.mean(f1))
    payload = {"files": {name: s.to_dict() for name, s in summaries.items()},
               "diversity": ev.diversity_summary(),
               "mbr": mbr_summary.to_dict() if mbr_summary is not None else None,
               "corpus_bleu": corpus}
    return FileScores(payload, outputs, mbr_texts, notes)
