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
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

from ..config.cli import CliArgumentParser
from ..errors import UserError, run_cli
from ..fileio import atomic_write_text
from ..metrics import SpecialTokens, check_bertscore
from ..metrics.files import find_files, score_files

logger = logging.getLogger("eval_seq2seq")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line flags (DiffuSeq's ``--folder --mbr --sos --eos --sep --pad`` and a few more)."""
    p = CliArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
        check_bertscore(args.bertscore_model)  # fail before the long work
    if args.mbr_out and not args.mbr:
        raise UserError("--mbr_out needs --mbr")
    for flag, out_path in (("--json", args.json), ("--mbr_out", args.mbr_out)):
        if out_path and os.path.isdir(out_path):
            raise UserError(f"{flag} {out_path} is a folder; give a file name")
        if out_path and not os.path.isdir(os.path.dirname(os.path.abspath(out_path))):
            raise UserError(f"{flag} {out_path}: its folder does not exist")
    if args.bertscore_batch_size < 1 or (args.bertscore_num_layers is not None and args.bertscore_num_layers < 1):
        raise UserError("--bertscore_batch_size and --bertscore_num_layers must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1 (default: all CPUs), got {args.workers}")
    special = SpecialTokens(sos=args.sos, eos=args.eos, sep=args.sep, pad=args.pad)

    t0 = time.perf_counter()
    files = find_files(args.folder, args.pattern)
    decode_files = {Path(f).resolve() for f in files} | {p.resolve() for p in Path(args.folder).rglob("*.meta.json")}
    for flag, out_path in (("--json", args.json), ("--mbr_out", args.mbr_out)):
        if out_path and Path(out_path).resolve() in decode_files:
            raise UserError(f"{flag} {out_path} is one of the decode's own files; give another file name")
    result = score_files(files, special, mbr=args.mbr, corpus_bleu=not args.no_corpus_bleu, len_mode=args.len_mode,
                         bertscore_model=args.bertscore_model, bertscore_num_layers=args.bertscore_num_layers,
                         bertscore_batch_size=args.bertscore_batch_size, workers=args.workers,
                         progress=False if args.no_progress else None, allow_mixed=args.allow_mixed)
    for note in result.notes:
        print(f"note: {note}")
    payload, outputs, mbr_texts = result.payload, result.outputs, result.mbr_texts
    n_files = len(outputs)
    corpus = payload["corpus_bleu"]
    t_total = time.perf_counter() - t0

    # ---- report
    columns = [("n", "n", "d"), ("BLEU", "bleu", ".4f"), ("ROUGE-L", "rougeL", ".4f"),
               ("dist-1", "dist1", ".4f"), ("avg_len", "avg_len", ".2f")]
    if corpus is not None:
        columns.append(("sacreBLEU", "corpus_bleu", ".2f"))
    if args.bertscore_model:
        columns.append(("BERTScore", "bertscore", ".4f"))
    rows = []
    suffix = common_suffix(list(payload["files"]))
    for name, vals in payload["files"].items():
        vals = dict(vals)
        if corpus is not None:
            vals["corpus_bleu"] = corpus["files"][name]
        rows.append((name[:len(name) - len(suffix)] + ("*" if suffix else ""), vals))
    if payload["mbr"] is not None:
        vals = dict(payload["mbr"])
        if corpus is not None:
            vals["corpus_bleu"] = corpus["mbr"]
        rows.append((f"MBR over {n_files} files", vals))
    print(f"folder: {args.folder}  ({n_files} file(s) matching {args.pattern!r})")
    if suffix:
        print(f"file names below end in *={suffix}")
    print(fmt_table(rows, columns))
    diversity = payload["diversity"]
    if diversity is not None:
        print(f"diversity over {n_files} files: self-BLEU {diversity['self_bleu']:.4f}  div-4 {diversity['div4']:.4f}")
    if not args.bertscore_model:
        print("note: BERTScore skipped (give --bertscore_model PATH, a local model such as deberta-xlarge-mnli)")
    logger.info("scored in %.1fs", t_total)

    if args.json:
        atomic_write_text(json.dumps(payload, indent=2) + "\n", Path(args.json))
        logger.info("wrote %s", args.json)
    if args.mbr_out and mbr_texts is not None:
        atomic_write_text("".join(json.dumps({"recover": text, "reference": outputs[0].references[i],
                                              "source": outputs[0].sources[i]}) + "\n"
                                  for i, text in enumerate(mbr_texts)), Path(args.mbr_out))
        logger.info("wrote %s", args.mbr_out)
    return 0


def run() -> None:
    """The ``diffuseq-eval`` console script."""
    run_cli(main)
