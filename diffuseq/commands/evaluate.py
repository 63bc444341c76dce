"""Evaluate decoded outputs with DiffuSeq's metrics: per seed file, then diversity or MBR across seeds.

    python scripts/eval_seq2seq.py --folder generation_outputs/RUN                 # tables + diversity
    python scripts/eval_seq2seq.py --folder generation_outputs/RUN --mbr --json out.json
    python scripts/eval_seq2seq.py --folder generation_outputs/RUN --pattern mbr.jsonl
    python scripts/eval_seq2seq.py --folder generation_outputs                     # every decode folder below

Each file holds one JSON object per line, ``{"recover": ..., "reference": ..., "source": ...}``;
all files of a folder are decodes of the same inputs (one per seed), line i being input i.
BLEU, ROUGE-L and dist-1 are fractions (as DiffuSeq prints them); corpus BLEU is sacreBLEU's 0-100.
A --folder with no matching files (an output root such as generation_outputs) is searched for the decode
folders below it (<out_dir>/<checkpoint folder>/<checkpoint file>.samples/), each evaluated in turn.
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
from ..errors import UserError
from . import run_cli
from ..fileio import atomic_write_text
from ..metrics import SpecialTokens, check_bertscore
from ..outputs import META_SUFFIX, find_decode_folders, find_files, score_files
from ..report import format_scores

logger = logging.getLogger("eval_seq2seq")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line flags (DiffuSeq's ``--folder --mbr --sos --eos --sep --pad`` and a few more)."""
    p = CliArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--folder", required=True,
                   help="folder of decoded outputs, one file per seed, or an output root holding such folders")
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


def evaluate_folder(folder: Path, args: argparse.Namespace, special: SpecialTokens) -> None:
    """Score the seed files of one decode folder, print its table, and write ``--json`` / ``--mbr_out``."""
    t0 = time.perf_counter()
    files = find_files(str(folder), args.pattern)
    decode_files = {Path(f).resolve() for f in files} | {p.resolve() for p in folder.rglob(f"*{META_SUFFIX}")}
    for flag, out_path in (("--json", args.json), ("--mbr_out", args.mbr_out)):
        if out_path and Path(out_path).resolve() in decode_files:
            raise UserError(f"{flag} {out_path} is one of the decode's own files; give another file name")
    result = score_files(files, allow_mixed=args.allow_mixed, special=special, mbr=args.mbr,
                         corpus_bleu=not args.no_corpus_bleu, len_mode=args.len_mode,
                         bertscore_model=args.bertscore_model, bertscore_num_layers=args.bertscore_num_layers,
                         bertscore_batch_size=args.bertscore_batch_size, workers=args.workers,
                         progress=False if args.no_progress else None)
    for note in result.notes:
        print(f"note: {note}")
    print(f"folder: {folder}  ({len(result.outputs)} file(s) matching {args.pattern!r})")
    print(format_scores(result.payload))
    logger.info("scored in %.1fs", time.perf_counter() - t0)
    if args.json:
        atomic_write_text(json.dumps(result.payload, indent=2) + "\n", Path(args.json))
        logger.info("wrote %s", args.json)
    if args.mbr_out and result.mbr_texts is not None:
        first = result.outputs[0]
        atomic_write_text("".join(json.dumps({"recover": text, "reference": first.references[i],
                                              "source": first.sources[i]}) + "\n"
                                  for i, text in enumerate(result.mbr_texts)), Path(args.mbr_out))
        logger.info("wrote %s", args.mbr_out)


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

    folders = find_decode_folders(args.folder, args.pattern)
    if folders != [Path(args.folder)]:
        names = ", ".join(map(str, folders))
        if len(folders) > 1 and (args.json or args.mbr_out):
            raise UserError(f"{args.folder} holds {len(folders)} decode folders ({names}) and --json/--mbr_out "
                            f"write one file: pass one of them as --folder")
        logger.info("%s holds no files matching %r; evaluating the decode folder%s below it: %s", args.folder,
                    args.pattern, "s" if len(folders) > 1 else "", names)
    for folder in folders:
        try:
            evaluate_folder(folder, args, special)
        except UserError as err:
            raise UserError(f"{folder}: {err}" if len(folders) > 1 else str(err)) from None
    if not args.bertscore_model:
        print("note: BERTScore skipped (give --bertscore_model PATH, a local model such as deberta-xlarge-mnli)")
    return 0


def run() -> None:
    """The ``diffuseq-eval`` console script."""
    run_cli(main)
