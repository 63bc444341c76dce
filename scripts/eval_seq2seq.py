"""Evaluate decoded outputs with DiffuSeq's metrics: per seed file, then diversity or MBR across seeds.

    python scripts/eval_seq2seq.py --folder generation_outputs/RUN                 # tables + diversity
    python scripts/eval_seq2seq.py --folder generation_outputs/RUN --mbr --json out.json
    python scripts/eval_seq2seq.py --folder generation_outputs/RUN --pattern mbr.jsonl

Each file holds one JSON object per line, ``{"recover": ..., "reference": ..., "source": ...}``;
all files of a folder are decodes of the same inputs (one per seed), line i being input i.
BLEU, ROUGE-L and dist-1 are fractions (as DiffuSeq prints them); corpus BLEU is sacreBLEU's 0-100.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from diffuseq import metrics  # noqa: E402
from diffuseq.errors import UserError, run_cli  # noqa: E402
from diffuseq.fileio import atomic_write_text  # noqa: E402
from diffuseq.outputs import check_outputs  # noqa: E402

logger = logging.getLogger("eval_seq2seq")
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


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line flags (DiffuSeq's ``--folder --mbr --sos --eos --sep --pad`` and a few more)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--folder", required=True, help="folder of decoded outputs, one file per seed")
    p.add_argument("--pattern", default="*.json", help="glob of the output files inside --folder")
    p.add_argument("--mbr", action="store_true", help="score the MBR selection across files instead of diversity")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the figures to this JSON file")
    p.add_argument("--mbr_out", default=None, metavar="OUT.jsonl",
                   help="with --mbr: write the selected lines (cleaned) as jsonl, like DiffuSeq's mbr.jsonl")
    p.add_argument("--sos", default="[CLS]", help="start token removed from the texts")
    p.add_argument("--eos", default="[SEP]", help="end token removed from the texts")
    p.add_argument("--sep", default="[SEP]", help="separator token removed from the texts")
    p.add_argument("--pad", default="[PAD]", help="pad token removed from the generated texts")
    p.add_argument("--len_mode", choices=("tokens", "diffuseq"), default="tokens",
                   help="avg_len as whitespace tokens, or as DiffuSeq's script counts it "
                        "(len(text.split(' ')), usually tokens + 2)")
    p.add_argument("--no_corpus_bleu", action="store_true", help="skip sacreBLEU corpus BLEU")
    p.add_argument("--bertscore_model", default=None, metavar="PATH",
                   help="local folder of a BERTScore model (the paper: deberta-xlarge-mnli); skipped if not given")
    p.add_argument("--bertscore_num_layers", type=int, default=None,
                   help="BERTScore layer (default: bert_score's choice for the model's name)")
    p.add_argument("--bertscore_batch_size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="processes for scoring (default: all CPUs)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--allow_mixed", action="store_true",
                   help="score files of different decodes (checkpoints or settings) together")
    return p.parse_args(argv)


def find_files(folder: str, pattern: str) -> list[str]:
    """The sorted regular files in ``folder`` matching ``pattern``; a ``UserError`` when there are none.

    Run descriptions written by the decoder (``*.meta.json``) are never outputs and are skipped.
    """
    if not os.path.isdir(folder):
        raise UserError(f"--folder {folder}: no such folder")
    files = sorted(p for p in glob.glob(os.path.join(glob.escape(folder), pattern))
                   if os.path.isfile(p) and not p.endswith(".meta.json"))
    if not files:
        raise UserError(f"no files matching {pattern!r} in {folder}")
    return files


def read_outputs(path: str, special: metrics.SpecialTokens) -> Outputs:
    """Read and clean one output file; malformed lines are a ``UserError`` naming the file and line."""
    recs, refs, srcs, lens = [], [], [], []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"{path} line {lineno}: malformed JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path} line {lineno}: expected a JSON object with fields "
                                    f"{', '.join(FIELDS)}")
                for key in FIELDS:
                    if key not in row:
                        raise UserError(f"{path} line {lineno}: missing field {key!r}")
                    if not isinstance(row[key], str):
                        raise UserError(f"{path} line {lineno}: field {key!r} is not a string")
                rec = metrics.clean_recover(row["recover"], special)
                recs.append(rec)
                refs.append(metrics.clean_reference(row["reference"], special))
                srcs.append(metrics.clean_source(row["source"], special))
                lens.append(metrics.diffuseq_length(rec))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
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


def common_suffix(names: list[str]) -> str:
    """The suffix all ``names`` share, cut to start at a non-alphanumeric character ('' for one name)."""
    if len(names) < 2:
        return ""
    suffix = os.path.commonprefix([n[::-1] for n in names])[::-1]
    while suffix and suffix[0].isalnum():
        suffix = suffix[1:]
    if any(len(n) == len(suffix) for n in names):
        return ""
    return suffix


def fmt_table(rows: list[tuple[str, dict]], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table: ``columns`` are (header, key, format)."""
    name_w = max([len("file")] + [len(name) for name, _ in rows])
    head = "file".ljust(name_w) + "".join(f"  {h:>9}" for h, _, _ in columns)
    lines = [head, "-" * len(head)]
    for name, vals in rows:
        cells = "".join(f"  {format(vals[k], f) if vals.get(k) is not None else '-':>9}" for _, k, f in columns)
        lines.append(name.ljust(name_w) + cells)
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.bertscore_model:
        metrics.check_bertscore(args.bertscore_model)  # fail before the long work
    if args.mbr_out and not args.mbr:
        raise UserError("--mbr_out needs --mbr")
    for flag, out_path in (("--json", args.json), ("--mbr_out", args.mbr_out)):
        if out_path and os.path.isdir(out_path):
            raise UserError(f"{flag} {out_path} is a folder; give a file name")
        if out_path and not os.path.isdir(os.path.dirname(os.path.abspath(out_path))):
            raise UserError(f"{flag} {out_path}: its folder does not exist")
    special = metrics.SpecialTokens(sos=args.sos, eos=args.eos, sep=args.sep, pad=args.pad)

    t0 = time.perf_counter()
    files = find_files(args.folder, args.pattern)
    groups = check_outputs([Path(f) for f in files], allow_mixed=args.allow_mixed)
    if len(groups) > 1:
        logger.warning("scoring files of %d different decodes together (--allow_mixed)", len(groups))
    outputs = [read_outputs(path, special) for path in files]
    check_aligned(outputs)
    n_files = len(outputs)
    if args.mbr and n_files < 2:
        print(f"note: --mbr needs at least two files, found {n_files}; MBR skipped")
    t_read = time.perf_counter() - t0

    ev = metrics.evaluate([o.recovers for o in outputs], [o.references for o in outputs],
                          mbr=args.mbr, diversity=not args.mbr, workers=args.workers,
                          progress=False if args.no_progress else None)
    t_score = time.perf_counter() - t0 - t_read

    file_summaries = {}
    for f, out in enumerate(outputs):
        s = ev.file_summary(f)
        if args.len_mode == "diffuseq":
            s.avg_len = float(np.mean(out.lengths_diffuseq))
        file_summaries[out.name] = s
    mbr_summary = ev.mbr_summary()
    mbr_texts: Optional[list[str]] = None
    if mbr_summary is not None:
        choice = ev.mbr_choice
        mbr_texts = [outputs[int(c)].recovers[i] for i, c in enumerate(choice)]
        mbr_refs = outputs[0].references
        if args.len_mode == "diffuseq":
            mbr_summary.avg_len = float(np.mean([metrics.diffuseq_length(t) for t in mbr_texts]))

    corpus: Optional[dict] = None
    if not args.no_corpus_bleu:
        hyp_lists = [o.recovers for o in outputs] + ([mbr_texts] if mbr_texts is not None else [])
        ref_lists = [o.references for o in outputs] + ([mbr_refs] if mbr_texts is not None else [])
        scores = metrics.corpus_bleu_many(hyp_lists, ref_lists, workers=args.workers)
        corpus = {"files": {o.name: scores[f] for f, o in enumerate(outputs)},
                  "mbr": scores[n_files] if mbr_texts is not None else None}

    if args.bertscore_model:
        for o in outputs:
            f1 = metrics.bertscore_f1(o.recovers, o.references, args.bertscore_model,
                                      args.bertscore_num_layers, args.bertscore_batch_size)
            file_summaries[o.name].extra["bertscore"] = float(np.mean(f1))
        if mbr_summary is not None:
            f1 = metrics.bertscore_f1(mbr_texts, mbr_refs, args.bertscore_model,
                                      args.bertscore_num_layers, args.bertscore_batch_size)
            mbr_summary.extra["bertscore"] = float(np.mean(f1))
    t_total = time.perf_counter() - t0

    # ---- report
    columns = [("n", "n", "d"), ("BLEU", "bleu", ".4f"), ("ROUGE-L", "rougeL", ".4f"),
               ("dist-1", "dist1", ".4f"), ("avg_len", "avg_len", ".2f")]
    if corpus is not None:
        columns.append(("sacreBLEU", "corpus_bleu", ".2f"))
    if args.bertscore_model:
        columns.append(("BERTScore", "bertscore", ".4f"))
    rows = []
    suffix = common_suffix(list(file_summaries))
    for name, s in file_summaries.items():
        vals = s.to_dict()
        if corpus is not None:
            vals["corpus_bleu"] = corpus["files"][name]
        rows.append((name[:len(name) - len(suffix)] + ("*" if suffix else ""), vals))
    if mbr_summary is not None:
        vals = mbr_summary.to_dict()
        if corpus is not None:
            vals["corpus_bleu"] = corpus["mbr"]
        rows.append((f"MBR over {n_files} files", vals))
    print(f"folder: {args.folder}  ({n_files} file(s) matching {args.pattern!r})")
    if suffix:
        print(f"file names below end in *={suffix}")
    print(fmt_table(rows, columns))
    diversity = ev.diversity_summary()
    if diversity is not None:
        print(f"diversity over {n_files} files: self-BLEU {diversity['self_bleu']:.4f}  div-4 {diversity['div4']:.4f}")
    if not args.bertscore_model:
        print("note: BERTScore skipped (give --bertscore_model PATH, a local model such as deberta-xlarge-mnli)")
    logger.info("read %.1fs, scored %.1fs, total %.1fs", t_read, t_score, t_total)

    if args.json:
        payload = {"files": {name: s.to_dict() for name, s in file_summaries.items()},
                   "diversity": diversity,
                   "mbr": mbr_summary.to_dict() if mbr_summary is not None else None,
                   "corpus_bleu": corpus}
        atomic_write_text(json.dumps(payload, indent=2) + "\n", Path(args.json))
        logger.info("wrote %s", args.json)
    if args.mbr_out and mbr_texts is not None:
        atomic_write_text("".join(json.dumps({"recover": text, "reference": outputs[0].references[i],
                                              "source": outputs[0].sources[i]}) + "\n"
                                  for i, text in enumerate(mbr_texts)), Path(args.mbr_out))
        logger.info("wrote %s", args.mbr_out)
    return 0


if __name__ == "__main__":
    run_cli(main)
